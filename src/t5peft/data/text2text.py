"""A classification task as text-to-text: the task's template filled with a row's texts -> its class's label word
(IMDb: ``"Review: <text>"`` -> ``"positive"`` / ``"negative"``; the task is declared in :mod:`.tasks`).

Texts are tokenized once up front (the tokenizer is fast and a split is 25,000 reviews). Batches are padded
to their longest member, or, for the compiled step, to fixed shapes (:class:`StaticShape`): sources to
``max_source_length``, targets to the longest label, and a short last batch filled with empty rows (all
padding, labels ignored), so every step has the same shapes and computes the same loss.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..tokenizer import TRUNCATION_SIDES, T5Tokenizer, pad_batch, truncate
from .sources import DataError, LabeledTexts
from .tasks import BUILTIN_TASKS, Task

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


SCORINGS = ("first_token", "sequence")


@dataclass
class TaskFormat:
    """How a labelled row becomes a (source, target) pair of token sequences: the task, and how long sources are
    cut."""

    task: Task = BUILTIN_TASKS["imdb"]
    max_source_length: int = 128
    truncation_side: str = "right"  # right keeps the head, left the tail, both head + tail
    strip_html: bool = False

    def __post_init__(self) -> None:
        if self.truncation_side not in TRUNCATION_SIDES:
            raise DataError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}")
        if self.max_source_length < 2:
            raise DataError(f"max_source_length must be at least 2, got {self.max_source_length}")

    @property
    def label_words(self) -> tuple[str, ...]:
        """The target word(s) of each class, index = class."""
        return self.task.label_words

    def source_text(self, *texts: str) -> str:
        """The source of one row from its text columns, in the task's column order."""
        if self.strip_html:
            texts = tuple(_HTML_BREAK.sub(" ", text) for text in texts)
        return self.task.source(dict(zip(self.task.text_columns, texts, strict=True)))


@dataclass
class EncodedSplit:
    """Token ids of every source, the class of every example, and the target ids of each class."""

    source_ids: list[list[int]]
    labels: list[int]
    target_ids: list[list[int]]  # per class: label word ids + </s>
    origin: str = ""
    truncated: int = 0  # sources longer than max_source_length before truncation
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(ids) for ids in self.source_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> EncodedSplit:
        return EncodedSplit(
            [self.source_ids[i] for i in indices],
            [self.labels[i] for i in indices],
            self.target_ids,
            origin=f"{self.origin} [subset of {len(indices)}]",
        )


def label_token_ids(tokenizer: T5Tokenizer, task: TaskFormat) -> list[list[int]]:
    """Target ids of each class (word ids + ``</s>``); two classes whose words tokenize alike are an error."""
    targets = tokenizer.encode(list(task.label_words))
    seen: dict[tuple[int, ...], str] = {}
    for word, ids in zip(task.label_words, targets, strict=True):
        other = seen.setdefault(tuple(ids), word)
        if other != word:
            raise DataError(
                f"label words {other!r} and {word!r} of task {task.task.name!r} tokenize to the same ids {ids}: "
                "the classes could not be told apart; choose other --label-words"
            )
    return targets


def scoring_of(targets: Sequence[Sequence[int]]) -> str:
    """How classes are scored: ``first_token`` when every label word is one token and those differ (the argmax
    over them at the first decoder step: IMDb's setup of record), else ``sequence``: the summed log-likelihood
    of each class's whole target (word tokens + ``</s>``)."""
    single = all(len(ids) == 2 for ids in targets) and len({ids[0] for ids in targets}) == len(targets)
    return "first_token" if single else "sequence"


def encode_split(data: LabeledTexts, tokenizer: T5Tokenizer, task: TaskFormat) -> EncodedSplit:
    sources = [task.source_text(*data.row_texts(i)) for i in range(len(data))]
    full = tokenizer.encode(sources)
    limit = task.max_source_length
    ids = [truncate(seq, limit, task.truncation_side) for seq in full]
    return EncodedSplit(
        ids,
        list(data.labels),
        label_token_ids(tokenizer, task),
        origin=data.origin,
        truncated=sum(len(seq) > limit for seq in full),
    )


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # target ids, -100 where padded (and in every empty filler row)
    rows: int  # real examples; rows after these are fillers of a static-shape batch
    tokens: int  # real source tokens (counted on the host, so counting never waits for the device)
    # one rank's part of a global batch (engine.distributed): its share of the batch's target tokens, which its mean
    # loss is weighted by, and the rows and source tokens of the whole global batch, which the run counts
    loss_weight: float = 1.0
    global_rows: int | None = None
    global_tokens: int | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = [t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels)]
        return Batch(*move, self.rows, self.tokens, self.loss_weight, self.global_rows, self.global_tokens)

    @property
    def counted(self) -> tuple[int, int]:
        """The examples and source tokens this step trains on, over all ranks."""
        rows = self.rows if self.global_rows is None else self.global_rows
        return rows, self.tokens if self.global_tokens is None else self.global_tokens

    @property
    def size(self) -> int:
        return self.rows

    @classmethod
    def from_tensors(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Batch:
        return cls(input_ids, attention_mask, labels, input_ids.shape[0], int(attention_mask.sum()))


@dataclass(frozen=True)
class StaticShape:
    """Fixed batch shapes for the compiled step: ``[batch_size, source_length]`` and ``[batch_size, target_length]``."""

    batch_size: int
    source_length: int
    target_length: int

    @classmethod
    def for_split(cls, split: EncodedSplit, batch_size: int, max_source_length: int) -> StaticShape:
        return cls(batch_size, max_source_length, max(len(t) for t in split.target_ids))


def _pad(sequences: list[list[int]], pad_id: int, shape: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if shape is None:
        return pad_batch(sequences, pad_id)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int, static: StaticShape | None = None) -> Batch:
    sources = [split.source_ids[i] for i in indices]
    targets = [split.target_ids[split.labels[i]] for i in indices]
    if static is not None and (len(indices) > static.batch_size or max(map(len, sources)) > static.source_length):
        raise ValueError(f"batch of {len(indices)} x {max(map(len, sources))} tokens exceeds the static shape {static}")
    input_ids, mask = _pad(sources, pad_id, None if static is None else (static.batch_size, static.source_length))
    target_ids, target_mask = _pad(
        targets, pad_id, None if static is None else (static.batch_size, static.target_length)
    )
    labels = target_ids.masked_fill(target_mask == 0, -100)
    return Batch(input_ids, mask, labels, len(indices), sum(map(len, sources)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def train_batches(
    split: EncodedSplit,
    batch_size: int,
    seed: int,
    epoch: int,
    pad_id: int,
    start: int = 0,
    static: StaticShape | None = None,
) -> Iterator[Batch]:
    """Batches of one epoch in shuffled order, skipping the first ``start`` batches (resume)."""
    for indices in batch_indices(len(split), batch_size, seed, epoch, start):
        yield collate(split, indices, pad_id, static)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[list[int]]:
    """The rows of each batch of one epoch (:func:`train_batches`), skipping the first ``start`` batches."""
    order = epoch_order(n, seed, epoch)
    for first in range(start * batch_size, len(order), batch_size):
        yield order[first : first + batch_size]


def target_lengths(split: EncodedSplit) -> list[int]:
    """The number of target tokens of each example (what its loss is averaged over)."""
    return [len(split.target_ids[label]) for label in split.labels]


def eval_batches(
    split: EncodedSplit, batch_size: int, pad_id: int, static: StaticShape | None = None
) -> Iterator[tuple[list[int], Batch]]:
    """Batches with the original indices of their rows: length-sorted (less padding) unless shapes are static."""
    for indices in eval_groups(split, batch_size, sort=static is None):
        yield indices, collate(split, indices, pad_id, static)


def eval_groups(split: EncodedSplit, batch_size: int, sort: bool = True) -> list[list[int]]:
    """The rows of each evaluation batch (:func:`eval_batches`); ``sort``: by source length."""
    order = list(range(len(split)))
    if sort:
        order.sort(key=lambda i: len(split.source_ids[i]))
    return [order[first : first + batch_size] for first in range(0, len(order), batch_size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
