"""Accuracy and loss on a split, by one decoder step (fast path) or by generation (check path).

Fast path: one forward pass with the gold target as decoder input gives both the evaluation loss
(cross-entropy over the label word and ``</s>``, as in training) and, at the first decoder position, the
logits of the two label words: the prediction is the larger one. This is the argmax restricted to the two
label words. The generation path decodes greedily over the whole vocabulary and parses the text; the two
agree whenever the model's top token is one of the label words, which ``agreement`` measures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..data.text2text import EncodedSplit, eval_batches
from ..tokenizer import T5Tokenizer


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    n: int
    confusion: list[list[int]]  # confusion[true][predicted]
    per_class: dict[str, dict[str, float]]
    seconds: float
    predictions: list[int] = field(repr=False, default_factory=list)
    positive_probability: list[float] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        values = asdict(self)
        values.pop("predictions")
        values.pop("positive_probability")
        return values


def class_metrics(confusion: list[list[int]], names: tuple[str, str]) -> dict[str, dict[str, float]]:
    metrics = {}
    for c, name in enumerate(names):
        true_positive = confusion[c][c]
        predicted = confusion[0][c] + confusion[1][c]
        actual = sum(confusion[c])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return metrics


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


@torch.no_grad()
def evaluate(
    model,
    split: EncodedSplit,
    pad_id: int,
    batch_size: int = 64,
    label_names: tuple[str, str] = ("negative", "positive"),
    bf16: bool = False,
) -> EvalResult:
    """Fast-path accuracy, loss, confusion matrix and per-class precision/recall/F1."""
    was_training = model.training
    model.eval()
    device = model.device
    first_tokens = torch.tensor([ids[0] for ids in split.target_ids], device=device)
    predictions = [0] * len(split)
    probabilities = [0.0] * len(split)
    loss_sum, token_count = 0.0, 0
    start = time.perf_counter()
    for indices, batch in eval_batches(split, batch_size, pad_id):
        batch = batch.to(device)
        with _autocast(device, bf16):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).logits
        logits = logits.float()
        mask = batch.labels != -100
        loss_sum += F.cross_entropy(logits[mask], batch.labels[mask], reduction="sum").item()
        token_count += int(mask.sum())
        pair = logits[:, 0, first_tokens].softmax(dim=-1)
        for row, index in enumerate(indices):
            predictions[index] = int(pair[row].argmax())
            probabilities[index] = float(pair[row, 1])
    confusion = [[0, 0], [0, 0]]
    for truth, guess in zip(split.labels, predictions, strict=True):
        confusion[truth][guess] += 1
    model.train(was_training)
    return EvalResult(
        accuracy=(confusion[0][0] + confusion[1][1]) / max(len(split), 1),
        loss=loss_sum / max(token_count, 1),
        n=len(split),
        confusion=confusion,
        per_class=class_metrics(confusion, label_names),
        seconds=time.perf_counter() - start,
        predictions=predictions,
        positive_probability=probabilities,
    )


@torch.no_grad()
def generation_predictions(
    model,
    split: EncodedSplit,
    tokenizer: T5Tokenizer,
    label_words: tuple[str, str],
    batch_size: int = 64,
    max_new_tokens: int = 4,
) -> list[int]:
    """Class per example from greedy generation: 0/1 for a label word, -1 for any other text."""
    was_training = model.training
    model.eval()
    predictions = [-1] * len(split)
    for indices, batch in eval_batches(split, batch_size, tokenizer.pad_token_id):
        batch = batch.to(model.device)
        generated = model.generate(batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens)
        for index, text in zip(indices, tokenizer.batch_decode(generated), strict=True):
            text = text.strip()
            predictions[index] = label_words.index(text) if text in label_words else -1
    model.train(was_training)
    return predictions
