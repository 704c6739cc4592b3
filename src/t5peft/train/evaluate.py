"""Accuracy, the task's metrics and loss on a split, by scoring every class (fast path) or by generation (check).

Fast path: one forward pass with the gold target as decoder input gives the evaluation loss (cross-entropy over
the label word(s) and ``</s>``, as in training). The class scores depend on the label words
(:func:`~t5peft.data.text2text.scoring_of`):

* ``first_token`` (every label word one token, all different; IMDb's setup of record): the logits of the label
  words at the first decoder position of that same pass; the prediction is the largest, the argmax restricted to
  the label words.
* ``sequence`` (a label word of several tokens, or two that share a first token): one more pass per class, with
  that class's target as decoder input; a class's score is the summed log-likelihood of its whole target (word
  tokens and ``</s>``), exactly, and the prediction the largest.

Probabilities are the softmax of the class scores. The generation path decodes greedily over the whole vocabulary
and parses the text; the two agree whenever the model's top sequence is a label word, which ``agreement``
measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..data.text2text import Batch, EncodedSplit, StaticShape, collate, eval_batches, eval_groups, scoring_of
from ..engine.distributed import Distribution
from ..engine.step import autocast, compile_blocks
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
    positive_probability: list[float] = field(repr=False, default_factory=list)  # of class 1 (two classes)
    macro_f1: float = 0.0  # the mean of the per-class F1
    metric: dict[str, float | str] = field(default_factory=dict)  # the task's metric of record: name, value
    scoring: str = "first_token"
    probabilities: list[list[float]] = field(repr=False, default_factory=list)  # per row, per class

    def summary(self) -> dict:
        values = asdict(self)
        for name in ("predictions", "positive_probability", "probabilities"):
            values.pop(name)
        return values


def class_metrics(confusion: list[list[int]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    metrics = {}
    for c, name in enumerate(names):
        true_positive = confusion[c][c]
        predicted = sum(row[c] for row in confusion)
        actual = sum(confusion[c])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return metrics


def matthews_correlation(confusion: list[list[int]]) -> float:
    """Matthews correlation of an N x N confusion matrix (Gorodkin's multi-class form; the usual MCC for two
    classes); 0.0 where it is undefined (a row or column sum covers everything)."""
    n = sum(map(sum, confusion))
    correct = sum(confusion[c][c] for c in range(len(confusion)))
    actual = [sum(row) for row in confusion]
    predicted = [sum(row[c] for row in confusion) for c in range(len(confusion))]
    covariance = correct * n - sum(a * p for a, p in zip(actual, predicted, strict=True))
    spread = math.sqrt((n * n - sum(p * p for p in predicted)) * (n * n - sum(a * a for a in actual)))
    return covariance / spread if spread else 0.0


def metric_of_record(name: str, accuracy: float, per_class: dict, confusion: list[list[int]]) -> float:
    """The task's metric: accuracy, F1 of class 1 (MRPC, QQP) or Matthews correlation (CoLA)."""
    if name == "accuracy":
        return accuracy
    if name == "f1":
        return list(per_class.values())[1]["f1"]
    if name == "matthews":
        return matthews_correlation(confusion)
    raise ValueError(f"unknown metric {name!r}")


def label_pair_probabilities(first_step_logits: Tensor, first_tokens: Tensor) -> Tensor:
    """``[B, C]``: softmax over the first tokens of the label words at the first decoder step."""
    return first_step_logits.float()[:, first_tokens].softmax(dim=-1)


def sequence_log_likelihood(logits: Tensor, labels: Tensor) -> Tensor:
    """``[B]``: the summed log-probability of each row's target (positions with label -100 left out)."""
    log_probs = _at_least_float32(logits).log_softmax(dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(labels == -100, 0.0).sum(dim=-1)


def _at_least_float32(values: Tensor) -> Tensor:
    """bfloat16 logits in float32; float32 and float64 as they are (a float64 model is scored in float64)."""
    return values if values.dtype == torch.float64 else values.float()


class Scorer:
    """Scores a batch on the device: loss summed over the target tokens, their count, class probabilities.

    ``targets``: the target ids of each class (label word ids + ``</s>``); they decide the scoring (module doc).
    With ``compile`` the model's blocks run compiled (static shapes: see ``evaluate``); the compiled code is
    kept by the model, so every evaluation after the first reuses it.
    """

    def __init__(
        self, model: nn.Module, targets: Sequence[Sequence[int]], bf16: bool = False, compile: bool = False
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.targets = [list(ids) for ids in targets]
        self.scoring = scoring_of(self.targets)
        self.first_tokens = torch.tensor([ids[0] for ids in self.targets], device=self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.compiled = compile
        if compile:
            compile_blocks(model)

    def _logits(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        with autocast(self.device, self.bf16):
            decoder_input_ids = self.model.shift_right(labels)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        return _at_least_float32(logits.logits)

    def _score(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self._logits(input_ids, attention_mask, labels)
        loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        if self.scoring == "first_token":
            return loss_sum, (labels != -100).sum(), label_pair_probabilities(logits[:, 0], self.first_tokens)
        return loss_sum, (labels != -100).sum(), self.class_scores(input_ids, attention_mask, labels).softmax(dim=-1)

    def class_scores(self, input_ids: Tensor, attention_mask: Tensor, like: Tensor) -> Tensor:
        """``[B, C]``: the summed log-likelihood of each class's whole target, one pass per class; the targets
        are laid out as ``like`` (the batch's labels: its rows, and its width when every target fits, as under
        compile's static shapes)."""
        scores = []
        width = max(like.shape[1], max(len(ids) for ids in self.targets))  # static shapes already fit every target
        for ids in self.targets:
            labels = like.new_full((like.shape[0], width), -100)
            labels[:, : len(ids)] = torch.as_tensor(ids, device=like.device)
            scores.append(sequence_log_likelihood(self._logits(input_ids, attention_mask, labels), labels))
        return torch.stack(scores, dim=-1)

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return self._score(batch.input_ids, batch.attention_mask, batch.labels)


@torch.no_grad()
def evaluate(
    model,
    split: EncodedSplit,
    pad_id: int,
    batch_size: int = 64,
    label_names: Sequence[str] = ("negative", "positive"),
    bf16: bool = False,
    *,
    scorer: Scorer | None = None,
    max_source_length: int | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    metric: str = "accuracy",
    dist: Distribution | None = None,
) -> EvalResult:
    """Fast-path accuracy, loss, confusion matrix, per-class precision/recall/F1, macro-F1 and ``metric``.

    Everything is computed on the device and copied back at the end. A compiled ``scorer`` gets batches of one
    static shape (sources padded to ``max_source_length``, the last batch filled with empty rows).

    On many ranks (``dist``), the batches are dealt out to the ranks and their results summed: each batch is the
    one a single process scores, so the result is the single-process result.
    """
    classes = len(split.target_ids)
    if len(label_names) != classes:
        raise ValueError(f"{len(label_names)} class names {list(label_names)} for {classes} label targets")
    was_training = model.training
    model.eval()
    device = model.device
    scorer = scorer or Scorer(model, split.target_ids, bf16)
    static = None
    if scorer.compiled:
        longest = max(len(ids) for ids in split.source_ids)
        static = StaticShape.for_split(split, batch_size, max_source_length or longest)
    start = time.perf_counter()
    dist = dist or Distribution.single()
    groups = eval_groups(split, batch_size, sort=static is None)
    batch_loss = torch.zeros(len(groups), dtype=torch.float64, device=device)  # each batch's summed loss
    batch_tokens = torch.zeros(len(groups), dtype=torch.long, device=device)
    # by the rows' original index; float64 holds a float32 or float64 score exactly
    pairs = torch.zeros(len(split), classes, dtype=torch.float64, device=device)
    rounds = list(dist.eval_rounds(len(groups)))
    for index, counted in tqdm(rounds, desc=desc, unit="batch", disable=not progress, leave=False):
        indices = groups[index]
        loss, tokens, pair = scorer(collate(split, indices, pad_id, static).to(device))
        if counted:  # a rank without a batch left scored one only to keep in step with the others
            batch_loss[index] = loss
            batch_tokens[index] = tokens
            pairs[torch.as_tensor(indices, device=device)] = pair[: len(indices)].double()
    # summed over the ranks: each batch was scored by one rank, the others hold zeros there
    batch_loss, batch_tokens, pairs = dist.sum(batch_loss), dist.sum(batch_tokens), dist.sum(pairs)
    loss_sum = 0.0
    for value in batch_loss.tolist():  # in batch order, in float64: what one process adds up batch by batch
        loss_sum += value
    token_count = int(batch_tokens.sum().item())
    pair_sorted = pairs.cpu()  # the one copy back to the host
    predictions = pair_sorted.argmax(dim=-1).tolist()
    probabilities: list[list[float]] = pair_sorted.tolist()
    confusion = [[0] * classes for _ in range(classes)]
    for truth, guess in zip(split.labels, predictions, strict=True):
        confusion[truth][guess] += 1
    model.train(was_training)
    accuracy = sum(confusion[c][c] for c in range(classes)) / max(len(split), 1)
    per_class = class_metrics(confusion, label_names)
    return EvalResult(
        accuracy=accuracy,
        loss=loss_sum / max(token_count, 1),
        n=len(split),
        confusion=confusion,
        per_class=per_class,
        seconds=time.perf_counter() - start,
        predictions=predictions,
        positive_probability=[row[1] for row in probabilities] if classes == 2 else [],
        macro_f1=sum(m["f1"] for m in per_class.values()) / classes,
        metric={"name": metric, "value": metric_of_record(metric, accuracy, per_class, confusion)},
        scoring=scorer.scoring,
        probabilities=probabilities,
    )


@torch.no_grad()
def generation_predictions(
    model,
    split: EncodedSplit,
    tokenizer: T5Tokenizer,
    label_words: Sequence[str],
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> list[int]:
    """Class per example from greedy generation: the class of a label word, -1 for any other text."""
    was_training = model.training
    model.eval()
    predictions = [-1] * len(split)
    if max_new_tokens is None:  # the longest label word and one token more, so a longer text is not cut to a word
        max_new_tokens = max(4, max(len(ids) for ids in split.target_ids) + 1)
    for indices, batch in eval_batches(split, batch_size, tokenizer.pad_token_id):
        batch = batch.to(model.device)
        generated = model.generate(batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens)
        for index, text in zip(indices, tokenizer.batch_decode(generated), strict=True):
            text = text.strip()
            predictions[index] = list(label_words).index(text) if text in label_words else -1
    model.train(was_training)
    return predictions
