"""Data loading for the IMDb sentiment task: one reader of text files (:mod:`.files`) and the places they are
found (:mod:`.sources`)."""

from t5peft.data.files import Columns, SkippedRows
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
    "Columns",
    "DataError",
    "LabeledTexts",
    "SkippedRows",
    "dataset_checksums",
    "is_single_split_file",
    "load_split",
    "shared_rows",
    "split_validation",
]
