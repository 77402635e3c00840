"""The original example's training command line, unchanged:

    python detr_ft.py --max-epochs 10 --pad --num-buckets 1

runs ``detr-ft train`` with the same flags (see ``detr-ft train --help``).

This file shares its name with the package, so from the repository root
``import detr_ft`` and ``python -m detr_ft`` would find it first; in those cases
it hands over to the real package (``src/detr_ft`` or the installed one).
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def _real_package():
    """Import the detr_ft package from src/ (or site-packages), never this file."""
    search = [str(_ROOT / "src")] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
    spec = importlib.machinery.PathFinder.find_spec("detr_ft", search)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("the detr_ft package is not installed; run 'make install' or 'pip install -e .'")
    package = importlib.util.module_from_spec(spec)
    sys.modules["detr_ft"] = package
    spec.loader.exec_module(package)
    return package


if __name__ == "__main__":
    _real_package()
    from detr_ft.cli import main

    # `python detr_ft.py ...` is the original training script; `python -m detr_ft ...` is the full CLI.
    args = sys.argv[1:] if __spec__ is not None else ["train", *sys.argv[1:]]
    raise SystemExit(main(args))
else:
    _real_package()  # `import detr_ft` from the repository root: replace this module by the package
