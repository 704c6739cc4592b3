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
from torch import Tensor, nn
from tqdm import tqdm

from ..data.text2text import Batch, EncodedSplit, StaticShape, collate, eval_batches, eval_groups
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


def label_pair_probabilities(first_step_logits: Tensor, first_tokens: Tensor) -> Tensor:
    """``[B, 2]``: softmax over the first tokens of the two label words at the first decoder step."""
    return first_step_logits.float()[:, first_tokens].softmax(dim=-1)


class Scorer:
    """Scores a batch on the device: loss summed over the target tokens, their count, label-word probabilities.

    With ``compile`` the model's blocks run compiled (static shapes: see ``evaluate``); the compiled code is
    kept by the model, so every evaluation after the first reuses it.
    """

    def __init__(self, model: nn.Module, first_tokens: list[int], bf16: bool = False, compile: bool = False) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.first_tokens = torch.tensor(first_tokens, device=self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.compiled = compile
        if compile:
            compile_blocks(model)

    def _score(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with autocast(self.device, self.bf16):
            decoder_input_ids = self.model.shift_right(labels)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        logits = logits.logits.float()
        loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        return loss_sum, (labels != -100).sum(), label_pair_probabilities(logits[:, 0], self.first_tokens)

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return self._score(batch.input_ids, batch.attention_mask, batch.labels)


@torch.no_grad()
def evaluate(
    model,
    split: EncodedSplit,
    pad_id: int,
    batch_size: int = 64,
    label_names: tuple[str, str] = ("negative", "positive"),
    bf16: bool = False,
    *,
    scorer: Scorer | None = None,
    max_source_length: int | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    dist: Distribution | None = None,
) -> EvalResult:
    """Fast-path accuracy, loss, confusion matrix and per-class precision/recall/F1.

    Everything is computed on the device and copied back at the end. A compiled ``scorer`` gets batches of one
    static shape (sources padded to ``max_source_length``, the last batch filled with empty rows).

    On many ranks (``dist``), the batches are dealt out to the ranks and their results summed: each batch is the
    one a single process scores, so the result is the single-process result.
    """
    was_training = model.training
    model.eval()
    device = model.device
    scorer = scorer or Scorer(model, [ids[0] for ids in split.target_ids], bf16)
    static = None
    if scorer.compiled:
        longest = max(len(ids) for ids in split.source_ids)
        static = StaticShape.for_split(split, batch_size, max_source_length or longest)
    start = time.perf_counter()
    dist = dist or Distribution.single()
    groups = eval_groups(split, batch_size, sort=static is None)
    batch_loss = torch.zeros(len(groups), dtype=torch.float64, device=device)  # each batch's summed loss
    batch_tokens = torch.zeros(len(groups), dtype=torch.long, device=device)
    pairs = torch.zeros(len(split), 2, dtype=torch.float32, device=device)  # by the rows' original index
    rounds = list(dist.eval_rounds(len(groups)))
    for index, counted in tqdm(rounds, desc=desc, unit="batch", disable=not progress, leave=False):
        indices = groups[index]
        loss, tokens, pair = scorer(collate(split, indices, pad_id, static).to(device))
        if counted:  # a rank without a batch left scored one only to keep in step with the others
            batch_loss[index] = loss
            batch_tokens[index] = tokens
            pairs[torch.as_tensor(indices, device=device)] = pair[: len(indices)]
    # summed over the ranks: each batch was scored by one rank, the others hold zeros there
    batch_loss, batch_tokens, pairs = dist.sum(batch_loss), dist.sum(batch_tokens), dist.sum(pairs)
    loss_sum = 0.0
    for value in batch_loss.tolist():  # in batch order, in float64: what one process adds up batch by batch
        loss_sum += value
    token_count = int(batch_tokens.sum().item())
    pair_sorted = pairs.cpu()  # the one copy back to the host
    predictions = pair_sorted.argmax(dim=-1).tolist()
    probabilities = pair_sorted[:, 1].double().tolist()
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
