"""The one error type detr-ft raises for user mistakes.

The CLI turns a ``UserError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, flag, dataset, checkpoint).

    The message names what is wrong and how to fix it, in one line.
    """


def first_line(e: BaseException, skip: tuple[str, ...] = (), limit: int = 160) -> str:
    """The first non-empty line of an exception's message (lines starting with ``skip`` left
    out), at most ``limit`` characters; the exception's type name when there is none."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    return lines[0][:limit] if lines else type(e).__name__
