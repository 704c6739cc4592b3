"""T5's span-corruption objective (Raffel et al. 2020, section 3.1.4 and the "random spans" variant of 3.3).

A raw segment of ``L`` tokens is corrupted as follows (the semantics of the T5 reference code's
``random_spans_noise_mask``, ``noise_span_to_unique_sentinel`` and ``random_spans_helper``):

* ``num_noise = round(L * noise_density)``, clamped to ``[1, L - 1]``;
  ``num_spans = round(num_noise / mean_noise_span_length)``, at least 1. The counts are exact: only the
  positions are random.
* The noise tokens are cut into ``num_spans`` positive lengths and the other tokens into as many, each cut
  drawn uniformly among all such cuts; the spans alternate non-noise first, noise second (so the segment
  starts with kept tokens and ends with a noise span).
* The input keeps the non-noise tokens and replaces the ``k``-th noise span by the sentinel ``<extra_id_k>``
  (32099, 32098, ... in the t5-small vocabulary), then ``</s>``. The target is, for each noise span, its
  sentinel followed by the tokens it replaced, then ``</s>``.

``round`` is round-half-to-even, as ``tf.round`` in the reference code. Randomness comes only from the
``numpy.random.Generator`` passed in, never from global state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import T5PeftError
from ..tokenizer import NUM_EXTRA_IDS, T5Tokenizer
from .settings import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY


class SpanCorruptionError(T5PeftError, ValueError):
    """Settings the objective cannot honour (a noise density, span length or input length)."""


def _check_parameters(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise SpanCorruptionError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_noise_span_length < 1.0:
        raise SpanCorruptionError(f"mean_noise_span_length must be at least 1, got {mean_noise_span_length}")


def span_counts(
    length: int, noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` for a raw segment of ``length`` tokens (deterministic)."""
    _check_parameters(noise_density, mean_noise_span_length)
    if length < 2:
        raise SpanCorruptionError(f"a segment needs at least 2 tokens (one kept, one noise), got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    if length - num_noise < num_spans:
        raise SpanCorruptionError(
            f"{length} tokens with noise_density {noise_density} and mean_noise_span_length "
            f"{mean_noise_span_length}: {num_spans} noise spans need as many non-noise spans, but only "
            f"{length - num_noise} non-noise tokens remain"
        )
    return num_noise, num_spans


def corrupted_lengths(
    length: int, noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """``(input_length, target_length)`` after corrupting ``length`` raw tokens, ``</s>`` included in both."""
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_lengths(
    input_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """``(raw_length, target_length)``: the most raw tokens whose corrupted input is ``input_length`` tokens.

    As the reference code's ``random_spans_helper`` (one sentinel per span on each side, ``</s>`` appended):
    512 gives ``(568, 114)``. Unlike it, the result is exact or an error: the reference keeps the largest raw
    length whose input is *at most* ``input_length`` (and pads), and shortens the raw length by one when
    ``noise_density`` is 0.5; neither is done here, because packing relies on exact lengths.
    """
    if input_length < 3:
        raise SpanCorruptionError(
            f"input_length must be at least 3 (a kept token, a sentinel and </s>), got {input_length}"
        )
    raw = input_length - 1  # never too long: a span costs at least as many tokens as its one sentinel
    while _fits(raw + 1, input_length, noise_density, mean_noise_span_length):
        raw += 1
    inputs, targets = corrupted_lengths(raw, noise_density, mean_noise_span_length)
    if inputs != input_length:
        raise SpanCorruptionError(
            f"no raw length corrupts to exactly {input_length} input tokens with noise_density {noise_density} "
            f"and mean_noise_span_length {mean_noise_span_length} ({raw} raw tokens give {inputs})"
        )
    return raw, targets


def _fits(raw: int, input_length: int, noise_density: float, mean_noise_span_length: float) -> bool:
    try:
        return corrupted_lengths(raw, noise_density, mean_noise_span_length)[0] <= input_length
    except ValueError:  # more spans than non-noise tokens: not a usable raw length
        return False


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random cut of ``num_items`` items into ``num_segments`` non-empty parts.

    Choosing ``num_segments - 1`` distinct cut points among the ``num_items - 1`` gaps makes every
    composition equally likely, as the reference's shuffled "first in segment" indicator does.
    """
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot cut {num_items} items into {num_segments} non-empty segments")
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False, shuffle=False)) + 1
    bounds = np.concatenate(([0], cuts, [num_items]))
    return np.diff(bounds)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> np.ndarray:
    """Boolean mask of ``length`` (True = noise): exact counts, random spans, non-noise span first."""
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    kept_lengths = random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, interleaved)


def sentinel_ids(tokenizer: T5Tokenizer, count: int = NUM_EXTRA_IDS) -> np.ndarray:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... as the tokenizer maps them (32099, 32098, ... for T5)."""
    ids = [tokenizer.token_to_id(f"<extra_id_{k}>") for k in range(count)]
    missing = [k for k, token_id in enumerate(ids) if token_id is None]
    if missing:
        raise SpanCorruptionError(f"{tokenizer.source}: the tokenizer has no <extra_id_{missing[0]}> sentinel token")
    return np.asarray(ids, dtype=np.int64)


def _span_starts(noise_mask: np.ndarray) -> np.ndarray:
    """True at the first token of every noise span."""
    previous = np.concatenate(([False], noise_mask[:-1]))
    return noise_mask & ~previous


def corrupt(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinels: np.ndarray, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of ``tokens`` under ``noise_mask``, each ending with ``eos_id``.

    For masks from :func:`random_spans_noise_mask` (kept span first, noise span last) this is the reference's
    ``noise_span_to_unique_sentinel`` (inputs) and ``nonnoise_span_to_unique_sentinel`` (targets) with
    ``</s>`` appended. For a mask that ends with kept tokens the reference also puts one sentinel at the end
    of the targets (the ``<Z>`` of the paper's figure 2); this function does not, every sentinel here
    announces tokens.
    """
    tokens = np.asarray(tokens)
    noise_mask = np.asarray(noise_mask, dtype=bool)
    if tokens.shape != noise_mask.shape or tokens.ndim != 1:
        raise ValueError(f"tokens {tokens.shape} and noise_mask {noise_mask.shape} must be 1-D of the same length")
    starts = _span_starts(noise_mask)
    num_spans = int(starts.sum())
    if num_spans > len(sentinels):
        raise ValueError(f"{num_spans} noise spans but only {len(sentinels)} sentinel tokens")
    span_sentinels = sentinels[:num_spans].astype(tokens.dtype)
    with_sentinels = tokens.copy()
    with_sentinels[starts] = span_sentinels
    inputs = with_sentinels[~noise_mask | starts]
    noise_tokens = tokens[noise_mask]
    targets = np.insert(noise_tokens, np.flatnonzero(starts[noise_mask]), span_sentinels)
    eos = np.asarray([eos_id], dtype=tokens.dtype)
    return np.concatenate((inputs, eos)), np.concatenate((targets, eos))


def span_corrupt(
    tokens: np.ndarray,
    rng: np.random.Generator,
    sentinels: np.ndarray,
    eos_id: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a noise mask for ``tokens`` from ``rng`` and corrupt them: ``(inputs, targets)``."""
    mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
    return corrupt(np.asarray(tokens), mask, sentinels, eos_id)


def restore(
    inputs: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray, sentinels: np.ndarray, eos_id: int
) -> np.ndarray:
    """The raw tokens back from ``(inputs, targets)``: every sentinel in the input filled with its span.

    The inverse of :func:`corrupt` (a check and a debugging aid); both sequences must end with ``eos_id``.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if len(inputs) == 0 or inputs[-1] != eos_id or len(targets) == 0 or targets[-1] != eos_id:
        raise ValueError("inputs and targets must both end with </s>")
    spans = _target_spans(targets[:-1], sentinels)
    sentinel_index = {int(s): k for k, s in enumerate(sentinels)}
    pieces: list[np.ndarray] = []
    for token in inputs[:-1]:
        k = sentinel_index.get(int(token))
        pieces.append(spans[k] if k is not None else np.asarray([token]))
    return np.concatenate(pieces) if pieces else inputs[:0]


def _target_spans(targets: np.ndarray, sentinels: np.ndarray) -> dict[int, np.ndarray]:
    """Span index -> replaced tokens, from a target without its ``</s>``."""
    is_sentinel = np.isin(targets, sentinels)
    positions = np.flatnonzero(is_sentinel)
    if len(targets) and (len(positions) == 0 or positions[0] != 0):
        raise ValueError("the target must start with a sentinel")
    sentinel_index = {int(s): k for k, s in enumerate(sentinels)}
    ends = [*positions[1:], len(targets)]
    return {sentinel_index[int(targets[p])]: targets[p + 1 : end] for p, end in zip(positions, ends, strict=True)}
