"""Tests of T5's span-corruption objective (t5peft.pretrain.objective)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t5peft.pretrain.objective import (
    compute_lengths,
    corrupt,
    corrupted_lengths,
    random_segmentation,
    random_spans_noise_mask,
    restore,
    sentinel_ids,
    span_corrupt,
    span_counts,
)

SENTINELS = np.arange(32099, 31999, -1)  # <extra_id_0> .. <extra_id_99> of t5-small (checked below)
EOS = 1
SETTINGS = [(0.15, 3.0), (0.3, 3.0), (0.15, 8.0), (0.5, 3.0), (0.3, 1.0)]


def _spans(mask: np.ndarray, value: bool) -> list[int]:
    """Lengths of the runs of ``value`` in ``mask``, in order."""
    edges = np.diff(np.concatenate(([0], (mask == value).astype(np.int8), [0])))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def test_sentinel_ids_come_from_the_tokenizer(tokenizer) -> None:
    ids = sentinel_ids(tokenizer)
    assert ids.tolist() == SENTINELS.tolist()
    assert ids[0] == tokenizer.vocab_size - 1 == 32099
    assert tokenizer.decode([int(ids[0]), int(ids[1])], skip_special_tokens=False) == "<extra_id_0><extra_id_1>"
    with pytest.raises(ValueError, match="extra_id_100"):
        sentinel_ids(tokenizer, 101)


def test_compute_lengths_reference_values() -> None:
    """T5's random_spans_helper: 512 input tokens come from 568 raw tokens and give 114 target tokens."""
    assert compute_lengths(512) == (568, 114)
    assert corrupted_lengths(568) == (512, 114)
    assert span_counts(568) == (85, 28)
    assert compute_lengths(128) == (141, 29)
    assert compute_lengths(256) == (284, 58)
    assert compute_lengths(1024) == (1137, 229)


@pytest.mark.parametrize(("density", "mean_span"), SETTINGS)
def test_compute_lengths_is_exact_and_largest(density: float, mean_span: float) -> None:
    for input_length in range(3, 1025):
        raw, target = compute_lengths(input_length, density, mean_span)
        assert corrupted_lengths(raw, density, mean_span) == (input_length, target)
        try:
            longer = corrupted_lengths(raw + 1, density, mean_span)[0]
        except ValueError:  # raw + 1 tokens cannot be corrupted with these settings at all
            continue
        assert longer > input_length


def test_reconstructs_the_original_tokens() -> None:
    """Filling every sentinel of the input with its target span gives back the raw tokens, for 1,000 draws."""
    draws = np.random.default_rng(2024)
    checked = 0
    for seed in range(1000):
        density, mean_span = SETTINGS[seed % len(SETTINGS)]
        length = int(draws.integers(8, min(1200, 100 * mean_span / density)))  # at most ~100 spans: 100 sentinels
        tokens = draws.integers(2, 32000, size=length)
        try:
            num_noise, num_spans = span_counts(length, density, mean_span)
        except ValueError:  # density 0.5, span 1: an odd length can leave fewer kept tokens than spans
            continue
        if num_spans > len(SENTINELS):  # rounding at the top of the range
            with pytest.raises(ValueError, match="sentinel"):
                span_corrupt(tokens, np.random.default_rng(seed), SENTINELS, EOS, density, mean_span)
            continue
        checked += 1
        inputs, targets = span_corrupt(tokens, np.random.default_rng(seed), SENTINELS, EOS, density, mean_span)
        assert (len(inputs), len(targets)) == corrupted_lengths(length, density, mean_span)
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert targets[0] == SENTINELS[0]
        assert inputs[np.isin(inputs, SENTINELS)].tolist() == SENTINELS[:num_spans].tolist()
        assert targets[np.isin(targets, SENTINELS)].tolist() == SENTINELS[:num_spans].tolist()
        assert len(targets) - 1 - num_spans == num_noise
        np.testing.assert_array_equal(restore(inputs, targets, SENTINELS, EOS), tokens)
    assert checked > 950


def test_the_papers_example(tokenizer) -> None:
    """Figure 2 of the T5 paper: "for inviting" and "last" dropped; each span is one sentinel."""
    tokens = np.asarray(tokenizer.encode("Thank you for inviting me to your party last week.")[0][:-1])
    words = [tokenizer.decode([int(t)]) for t in tokens]
    mask = np.isin(words, ["for", "inviting", "last"])
    inputs, targets = corrupt(tokens, mask, sentinel_ids(tokenizer), tokenizer.eos_token_id)
    assert tokenizer.decode(inputs, skip_special_tokens=False) == (
        "Thank you<extra_id_0> me to your party<extra_id_1> week.</s>"
    )
    assert tokenizer.decode(targets, skip_special_tokens=False) == "<extra_id_0> for inviting<extra_id_1> last</s>"
    assert inputs.tolist() == [1562, 25, 32099, 140, 12, 39, 1088, 32098, 471, 5, 1]
    assert targets.tolist() == [32099, 21, 14256, 32098, 336, 1]


def test_mask_counts_are_exact_and_spans_interleave() -> None:
    draws = np.random.default_rng(7)
    for seed in range(300):
        length = int(draws.integers(2, 2000))
        num_noise, num_spans = span_counts(length)
        mask = random_spans_noise_mask(length, np.random.default_rng(seed))
        assert mask.dtype == bool and mask.shape == (length,)
        assert int(mask.sum()) == num_noise == min(max(round(0.15 * length), 1), length - 1)
        assert num_spans == max(round(num_noise / 3.0), 1)
        assert not mask[0] and mask[-1]  # a kept span first, a noise span last
        assert len(_spans(mask, True)) == len(_spans(mask, False)) == num_spans


def test_noise_density_and_mean_span_length_match_the_settings() -> None:
    """Measured on 400 masks with lengths drawn uniformly from [200, 1200).

    In T5's scheme the counts are not random: a segment of L tokens has n = round(0.15 L) noise tokens in
    s = round(n / 3) spans; only where they fall is random. So the bounds are rounding bounds, not sampling
    ones. Rounding moves n by at most 1/2, so |n / L - 0.15| <= 1 / (2 L) for each mask and the pooled density
    sum(n) / sum(L) is within K / (2 sum(L)) of 0.15 for K masks. Likewise |n / 3 - s| <= 1/2, so the mean
    span length of a mask satisfies |n / s - 3| <= 3 / (2 s). The sampling spread of the positions is
    tested in test_span_lengths_follow_a_uniform_random_segmentation.
    """
    draws = np.random.default_rng(11)
    lengths = draws.integers(200, 1200, size=400)
    masks = [random_spans_noise_mask(int(length), np.random.default_rng(seed)) for seed, length in enumerate(lengths)]
    noise = np.asarray([mask.sum() for mask in masks])
    spans = np.asarray([len(_spans(mask, True)) for mask in masks])
    assert np.all(np.abs(noise / lengths - 0.15) <= 1 / (2 * lengths) + 1e-12)
    assert abs(noise.sum() / lengths.sum() - 0.15) <= len(masks) / (2 * lengths.sum())
    assert np.all(np.abs(noise / spans - 3.0) <= 3.0 / (2 * spans) + 1e-12)
    span_lengths = np.concatenate([_spans(mask, True) for mask in masks])
    assert abs(span_lengths.mean() - 3.0) <= 3.0 / (2 * spans.min())


@pytest.mark.parametrize("kind", ["noise", "kept"])
def test_span_lengths_follow_a_uniform_random_segmentation(kind: str) -> None:
    """The first span of 4,000 independent 568-token masks against the exact law of a random segmentation.

    A 568-token segment has n = 85 noise tokens in s = 28 spans and 483 kept tokens in 28 spans. Cutting
    N items into s positive parts uniformly (every one of the C(N-1, s-1) cuts equally likely), one part X
    has P(X = 1) = C(N-2, s-2) / C(N-1, s-1) = (s-1) / (N-1), E[X] = N / s and, as X - 1 is one part of a
    uniform split of M = N - s into s parts of size >= 0, Var[X] = M (s-1) (M+s) / (s^2 (s+1)).
    Over K independent masks the number of first spans of length 1 is Binomial(K, p), and the mean of X
    has standard error sqrt(Var[X] / K). Both must lie within 5 standard deviations of their expectation:
    a correct implementation fails with probability below 1e-6 (normal approximation).
    """
    k = 4000
    items, segments = (85, 28) if kind == "noise" else (483, 28)
    first = np.asarray(
        [_spans(random_spans_noise_mask(568, np.random.default_rng(seed)), kind == "noise")[0] for seed in range(k)]
    )
    p_one = (segments - 1) / (items - 1)
    assert abs((first == 1).sum() - k * p_one) <= 5 * math.sqrt(k * p_one * (1 - p_one))
    m = items - segments
    variance = m * (segments - 1) * (m + segments) / (segments**2 * (segments + 1))
    assert abs(first.mean() - items / segments) <= 5 * math.sqrt(variance / k)


def test_random_segmentation_is_a_positive_composition() -> None:
    rng = np.random.default_rng(0)
    for items, segments in [(1, 1), (2, 2), (5, 1), (10, 3), (100, 100)]:
        parts = random_segmentation(items, segments, rng)
        assert len(parts) == segments and parts.sum() == items and parts.min() >= 1
    with pytest.raises(ValueError, match="cannot cut"):
        random_segmentation(3, 4, rng)


def test_randomness_only_from_the_generator_passed_in() -> None:
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    first = random_spans_noise_mask(568, np.random.default_rng(5))
    np.testing.assert_array_equal(first, random_spans_noise_mask(568, np.random.default_rng(5)))
    assert not np.array_equal(first, random_spans_noise_mask(568, np.random.default_rng(6)))
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)


def test_invalid_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="noise_density"):
        span_counts(100, 0.0)
    with pytest.raises(ValueError, match="noise_density"):
        span_counts(100, 1.0)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        span_counts(100, 0.15, 0.5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_counts(1)
    with pytest.raises(ValueError, match="non-noise tokens"):
        span_counts(3, 0.5, 1.0)
    with pytest.raises(ValueError, match="sentinel"):
        corrupt(np.arange(10), np.tile([False, True], 5), SENTINELS[:4], EOS)
    with pytest.raises(ValueError, match="input_length"):
        compute_lengths(2)
