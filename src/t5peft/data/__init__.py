"""Data loading: classification tasks declared as data (:mod:`.tasks`), one reader of text files (:mod:`.files`) and
the places they are found (:mod:`.sources`). Names are imported on first use, so the torch- and pyarrow-free task
declarations load alone (the command line's help reads them)."""

from .._lazy import lazy_getattr

_LAZY = {
    "Columns": "files",
    "SkippedRows": "files",
    "DataError": "sources",
    "LabeledTexts": "sources",
    "dataset_checksums": "sources",
    "is_single_split_file": "sources",
    "load_split": "sources",
    "shared_rows": "sources",
    "split_validation": "sources",
    "Task": "tasks",
    "TaskError": "tasks",
    "BUILTIN_TASKS": "tasks",
    "resolve_task": "tasks",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
