"""N-class scoring: whole label sequences scored exactly (against a brute-force loop), the metrics of record."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_config
from t5peft import T5ForConditionalGeneration
from t5peft.data.text2text import EncodedSplit, eval_batches, scoring_of
from t5peft.train.evaluate import Scorer, class_metrics, evaluate, matthews_correlation, metric_of_record

# a shared first token (5), a label that is a prefix of another ([5, 7] of [5, 7, 8]), and a one-token label
TARGETS = [[5, 7, 1], [5, 9, 1], [12, 1], [5, 7, 8, 1]]


@torch.no_grad()
def brute_force_log_likelihood(model, source: list[int], target: list[int]) -> float:
    """One example alone (no padding), one class: the sum of log p(target token | source, earlier tokens)."""
    labels = torch.tensor([target])
    logits = model(input_ids=torch.tensor([source]), decoder_input_ids=model.shift_right(labels)).logits
    log_probs = logits.log_softmax(dim=-1)[0]
    return sum(float(log_probs[position, token]) for position, token in enumerate(target))


@pytest.fixture
def double_model():
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_config()).double().eval()
    return model


def test_sequence_scores_are_the_summed_log_likelihood_of_each_whole_label(double_model):
    generator = torch.Generator().manual_seed(1)
    sources = [torch.randint(2, 1000, (n,), generator=generator).tolist() for n in (3, 9, 5, 12, 7, 4)]
    split = EncodedSplit(sources, [0, 1, 2, 3, 0, 1], TARGETS)
    assert scoring_of(TARGETS) == "sequence"
    scorer = Scorer(double_model, TARGETS)
    expected = torch.tensor(
        [[brute_force_log_likelihood(double_model, s, t) for t in TARGETS] for s in sources], dtype=torch.float64
    )
    measured = torch.zeros_like(expected)
    with torch.no_grad():
        for indices, batch in eval_batches(split, 4, pad_id=0):  # padded, length-sorted batches of 4
            measured[indices] = scorer.class_scores(batch.input_ids, batch.attention_mask, batch.labels)
    # float64 throughout: padding and batching change only the rounding (measured differences ~1e-15)
    torch.testing.assert_close(measured, expected, rtol=0, atol=1e-10)
    result = evaluate(double_model, split, pad_id=0, batch_size=4, label_names=("a", "b", "c", "d"))
    assert result.scoring == "sequence"
    assert result.predictions == expected.argmax(dim=-1).tolist()
    probabilities = torch.tensor(result.probabilities, dtype=torch.float64)
    torch.testing.assert_close(probabilities, expected.softmax(dim=-1), rtol=0, atol=1e-10)
    assert len(result.confusion) == 4 and all(len(row) == 4 for row in result.confusion)


def test_single_token_label_words_keep_first_token_scoring():
    assert scoring_of([[2841, 1], [1465, 1]]) == "first_token"  # IMDb's negative / positive
    assert scoring_of([[2841, 1], [2841, 5, 1]]) == "sequence"


def test_metrics_of_record():
    confusion = [[5, 2, 0], [1, 3, 1], [0, 2, 6]]
    per_class = class_metrics(confusion, ("a", "b", "c"))
    assert per_class["b"]["precision"] == pytest.approx(3 / 7) and per_class["b"]["recall"] == pytest.approx(3 / 5)
    binary = [[40, 10], [5, 45]]  # tn fp / fn tp
    tp, tn, fp, fn = 45, 40, 10, 5
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_correlation(binary) == pytest.approx(mcc, rel=1e-12)
    f1 = metric_of_record("f1", 0.85, class_metrics(binary, ("no", "yes")), binary)
    assert f1 == pytest.approx(2 * 45 / (2 * 45 + 10 + 5), rel=1e-12)
    assert matthews_correlation([[3, 0], [3, 0]]) == 0.0  # one predicted class: undefined, reported as 0
