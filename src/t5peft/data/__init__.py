"""Data loading for the IMDb sentiment task."""

from t5peft.data.sources import (
    DataError,
    LabeledTexts,
    dataset_checksums,
    is_single_split_file,
    load_split,
    shared_rows,
    split_validation,
)

__all__ = [
    "DataError",
    "LabeledTexts",
    "dataset_checksums",
    "is_single_split_file",
    "load_split",
    "shared_rows",
    "split_validation",
]
