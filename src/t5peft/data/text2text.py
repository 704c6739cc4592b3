"""IMDb sentiment as text-to-text: ``"Review: <text>"`` -> ``"positive"`` / ``"negative"``.

Texts are tokenized once up front (the tokenizer is fast and a split is 25,000 reviews); batches are padded
dynamically to their longest member.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..tokenizer import TRUNCATION_SIDES, T5Tokenizer, pad_batch, truncate
from .sources import LabeledTexts

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclass
class TaskFormat:
    """How a labelled review becomes a (source, target) pair of token sequences."""

    prefix: str = "Review: "
    label_words: tuple[str, str] = ("negative", "positive")  # index = label (0 = negative, 1 = positive)
    max_source_length: int = 128
    truncation_side: str = "right"  # right keeps the head, left the tail, both head + tail
    strip_html: bool = False

    def __post_init__(self) -> None:
        self.label_words = tuple(self.label_words)
        if len(self.label_words) != 2 or len(set(self.label_words)) != 2 or not all(self.label_words):
            raise ValueError(f"label_words must be two different non-empty words, got {self.label_words!r}")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}")
        if self.max_source_length < 2:
            raise ValueError(f"max_source_length must be at least 2, got {self.max_source_length}")

    def source_text(self, text: str) -> str:
        if self.strip_html:
            text = _HTML_BREAK.sub(" ", text)
        return self.prefix + text


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
    """Target ids of each class (word ids + ``</s>``); the first tokens must differ for one-step scoring."""
    targets = tokenizer.encode(list(task.label_words))
    if targets[0][0] == targets[1][0]:
        raise ValueError(
            f"label words {task.label_words!r} start with the same token ({targets[0][0]}); "
            "one-step scoring needs different first tokens"
        )
    return targets


def encode_split(data: LabeledTexts, tokenizer: T5Tokenizer, task: TaskFormat) -> EncodedSplit:
    sources = [task.source_text(t) for t in data.texts]
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
    labels: torch.Tensor  # target ids, -100 where padded
    classes: torch.Tensor  # 0 / 1

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels, self.classes))
        )

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int) -> Batch:
    input_ids, mask = pad_batch([split.source_ids[i] for i in indices], pad_id)
    targets, target_mask = pad_batch([split.target_ids[split.labels[i]] for i in indices], pad_id)
    labels = targets.masked_fill(target_mask == 0, -100)
    classes = torch.tensor([split.labels[i] for i in indices], dtype=torch.long)
    return Batch(input_ids, mask, labels, classes)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def train_batches(
    split: EncodedSplit, batch_size: int, seed: int, epoch: int, pad_id: int, start: int = 0
) -> Iterator[Batch]:
    """Batches of one epoch in shuffled order, skipping the first ``start`` batches (resume)."""
    order = epoch_order(len(split), seed, epoch)
    for first in range(start * batch_size, len(order), batch_size):
        yield collate(split, order[first : first + batch_size], pad_id)


def eval_batches(split: EncodedSplit, batch_size: int, pad_id: int) -> Iterator[tuple[list[int], Batch]]:
    """Length-sorted batches (less padding); yields the original indices with each batch."""
    order = sorted(range(len(split)), key=lambda i: len(split.source_ids[i]))
    for first in range(0, len(order), batch_size):
        indices = order[first : first + batch_size]
        yield indices, collate(split, indices, pad_id)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
