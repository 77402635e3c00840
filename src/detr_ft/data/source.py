"""``read_split``: one split of the dataset a command names, from whichever reader holds it.

``--hf-dataset`` when given (data/hf_dataset.py), else the COCO folder ``--data-dir``
(data/coco.py); both give a ``DatasetIndex``, so train, evaluate, predict and
``data check`` read their splits the same way.
"""

from __future__ import annotations

from pathlib import Path

from detr_ft.data.coco import load_index
from detr_ft.data.hf_dataset import load_hf_index
from detr_ft.types import Categories, DatasetIndex


def read_split(data_dir, split: str, on_bad_data: str = "error", categories: Categories | None = None,
               hf_dataset: str | None = None) -> DatasetIndex:
    """One split from ``--hf-dataset`` when given, else from the COCO folder ``--data-dir``."""
    if hf_dataset:
        return load_hf_index(hf_dataset, split, on_bad_data, categories=categories)
    return load_index(Path(data_dir).expanduser(), split, on_bad_data, categories=categories)
