"""Data loading for the IMDb sentiment task."""

from t5peft.data.sources import DataError, LabeledTexts, dataset_checksums, load_split, split_validation

__all__ = ["DataError", "LabeledTexts", "dataset_checksums", "load_split", "split_validation"]
