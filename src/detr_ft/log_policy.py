"""Log and warning policy: library logs and warnings down to what a user needs.

Set once where a command starts (``cli.main``, and the processes the benchmarks spawn);
``--debug`` keeps everything.
"""

from __future__ import annotations

import logging

# huggingface_hub warns on every retry of a request it then gives up on (offline: five lines over
# about 30 s); detr-ft's own error line says what failed and what to do instead.
HUB_RETRY_LOGGER = "huggingface_hub.utils._http"

# The commands that run Lightning (bench: its training benchmarks). The others never import it,
# which takes seconds: `data` needs neither it nor transformers.
LIGHTNING_COMMANDS = ("train", "demo", "bench")


def configure_logging(debug: bool, command: str | None = None) -> None:
    """Library logs and warnings down to what a user needs, unless ``debug``; for the libraries
    ``command`` uses (None: all of them)."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    logging.getLogger(HUB_RETRY_LOGGER).setLevel(logging.NOTSET if debug else logging.ERROR)
    if debug:
        return
    if command is None or command in LIGHTNING_COMMANDS:
        import lightning  # noqa: F401  (its import sets its loggers' levels; quiet them after)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # detr-ft writes config.yaml into the output dir first, and resumes there on purpose
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    if command != "data":
        try:
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
