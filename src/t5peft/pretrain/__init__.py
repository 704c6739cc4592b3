"""T5 span-corruption pretraining: the objective (:mod:`.objective`)."""

from .objective import (
    compute_lengths,
    corrupt,
    corrupted_lengths,
    random_spans_noise_mask,
    restore,
    sentinel_ids,
    span_corrupt,
    span_counts,
)

__all__ = [
    "compute_lengths",
    "corrupt",
    "corrupted_lengths",
    "random_spans_noise_mask",
    "restore",
    "sentinel_ids",
    "span_corrupt",
    "span_counts",
]
