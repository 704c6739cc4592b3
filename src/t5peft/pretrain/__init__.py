"""T5 span-corruption pretraining: the objective (:mod:`.objective`), its data (:mod:`.data`), the settings
(:mod:`.settings`) and the run (:mod:`.loop`: :func:`pretrain`, ``t5peft pretrain``).

The objective, the data and the run import numpy and torch, so they are imported when first asked for: reading
the settings (the command line's help) stays cheap.
"""

from __future__ import annotations

from .._lazy import lazy_getattr
from .settings import PretrainConfig as PretrainConfig
from .settings import PretrainError as PretrainError

_LAZY = {
    "LrSchedule": "loop",
    "Overlap": "data",
    "PretrainBatch": "data",
    "PretrainData": "data",
    "PretrainTexts": "data",
    "Pretraining": "loop",
    "assert_disjoint": "data",
    "batches_per_epoch": "data",
    "build_data": "data",
    "build_pretrain_data": "data",
    "compute_lengths": "objective",
    "corrupt": "objective",
    "corrupted_lengths": "objective",
    "count_overlap": "data",
    "exclude_texts": "data",
    "load_pretrain_texts": "data",
    "prepare_texts": "data",
    "pretrain": "loop",
    "random_spans_noise_mask": "objective",
    "record_test_overlap": "data",
    "restore": "objective",
    "sentinel_ids": "objective",
    "span_corrupt": "objective",
    "span_counts": "objective",
    "train_batches": "data",
    "validation_batches": "data",
    "validation_loss": "loop",
    "weights_summary": "loop",
}

__all__ = sorted(["PretrainConfig", "PretrainError", *_LAZY])


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return __all__
