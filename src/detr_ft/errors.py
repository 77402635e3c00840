"""The one error type detr-ft raises for user mistakes.

The CLI turns a ``UserError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, flag, dataset, checkpoint).

    The message names what is wrong and how to fix it, in one line.
    """
