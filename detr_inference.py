"""The original example's inference command line, unchanged:

    python detr_inference.py --pad --num-buckets 0 --use-ckpt --ckpt-path P

runs ``detr-ft predict`` on the test split (see ``detr-ft predict --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from detr_ft.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["predict", *sys.argv[1:]]))
