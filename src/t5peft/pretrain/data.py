"""Pretraining data: text sources, packing into exact-length span-corruption examples, and batches.

Sources (:func:`load_pretrain_texts`):

* an IMDb folder in the Hub layout of ``stanfordnlp/imdb`` (``plain_text/{split}-*.parquet``) or that Hub id:
  the ``unsupervised`` and ``train`` texts by default. The ``test`` split is refused: it is the benchmark's
  held-out evaluation data and is never pretraining data.
* one file, one document per row: ``.txt`` (one per line), ``.jsonl`` / ``.json`` (JSON lines), ``.parquet`` or
  ``.csv``, each with a ``text`` column; blank lines hold no document and are counted. A file whose name starts
  with ``test`` (such as the Hub shard ``test-00000-of-00001.parquet``) is refused as a test split.

Files are read by the data package's one reader (:mod:`t5peft.data.files`, the Hub layout and download of
:mod:`t5peft.data.sources`), the one fine-tuning uses; pretraining adds only its own rules: which splits
(``unsupervised`` + ``train``, never ``test``), that a text may not hold a sentinel token, and, for a run
(:func:`prepare_texts`), recording the overlap with the test texts and dropping exact test copies. Bad input is a
one-line :class:`~t5peft.data.files.DataError` naming the file, the row or line and the problem. Nothing is dropped
silently: counts of what was read, skipped or excluded go into ``info``.

Packing (:func:`build_pretrain_data`): documents are split into training and validation documents (by
document, seeded), tokenized with ``</s>`` after each (so ``</s>`` separates documents), concatenated and
cut into chunks of exactly ``raw_length`` tokens (:func:`~t5peft.pretrain.objective.compute_lengths`), the
tail shorter than a chunk being dropped and counted. Span corruption of a chunk then gives exactly
``input_length`` input and ``target_length`` target tokens: no padding. The T5 reference code joins
documents without a separator; the ``</s>`` between them follows Hugging Face's T5 pretraining example.

Batches (:func:`train_batches`, :func:`validation_batches`): the noise of a chunk is drawn from a generator
seeded with ``(seed, stream, epoch, chunk index)``, and the chunk order of an epoch from ``(seed, epoch)``;
a batch is therefore a function of ``(seed, epoch, batch index)`` only, which makes resuming exact.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from ..data.files import TEXT_ONLY, DataError, FileRows, read_files, sha256_file
from ..data.sources import (
    HUB_CONFIG_DIR,
    download_hub_dataset,
    has_local_split,
    hub_split_shards,
    load_split,
    source_kind,
)
from ..tokenizer import T5Tokenizer
from .objective import (
    MEAN_NOISE_SPAN_LENGTH,
    NOISE_DENSITY,
    compute_lengths,
    sentinel_ids,
    span_corrupt,
    span_counts,
)
from .settings import PretrainError

IMDB_PRETRAIN_SPLITS = ("unsupervised", "train")
REFUSED_SPLITS = ("test",)

_SENTINEL_TEXT = re.compile(r"<extra_id_\d+>")
_TEST_FILE_NAME = re.compile(r"^test(?:[-_.]|$)", re.IGNORECASE)
_TRAIN_STREAM, _VALIDATION_STREAM, _ORDER_STREAM, _SPLIT_STREAM = 0, 1, 2, 3
_TOKENIZE_BATCH = 1000


# ---------------------------------------------------------------------------------------------------------
# Text sources: the data package's reader, and pretraining's own rules


class PretrainDataSettings(Protocol):
    """The settings the pretraining texts and their packing depend on (:class:`~.loop.PretrainConfig` has them)."""

    data: str
    splits: list[str] | None
    test_data: str | None
    exclude_test_overlap: bool
    input_length: int
    noise_density: float
    mean_noise_span_length: float
    validation_documents: int
    seed: int

    def data_settings(self) -> dict[str, Any]: ...


@dataclass
class PretrainTexts:
    """Documents for pretraining, in source order, and ``info``: what was read (splits, files, counts)."""

    texts: list[str]
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.texts)

    def parts(self) -> list[tuple[str, list[str]]]:
        """``(split or file name, its texts)`` for each input, in the order they were read."""
        result = []
        start = 0
        for part in self.info["inputs"]:
            result.append((part["name"], self.texts[start : start + part["documents"]]))
            start += part["documents"]
        return result


def load_pretrain_texts(
    source: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    *,
    downloader: Callable[..., str] | None = None,
) -> PretrainTexts:
    """Read the pretraining documents of ``source`` (see the module docstring for the sources).

    ``splits`` applies to Hub-layout folders and Hub ids (default ``("unsupervised", "train")``); asking for
    ``"test"`` raises. ``downloader`` replaces ``huggingface_hub.snapshot_download`` (tests).
    """
    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind == "file":
        if splits is not None:
            raise DataError(f"{path}: a single file is one set of documents; splits apply only to folders")
        return _load_text_file(path)
    chosen = _check_splits(splits, str(source))
    if kind == "folder":
        return _load_split_dir(path, chosen, str(path))
    return _load_hub_id(str(source), chosen, downloader)


def _check_splits(splits: Sequence[str] | None, source: str) -> tuple[str, ...]:
    chosen = IMDB_PRETRAIN_SPLITS if splits is None else (splits,) if isinstance(splits, str) else tuple(splits)
    refused = [split for split in chosen if split in REFUSED_SPLITS]
    if refused:
        raise DataError(
            f"{source}: the {refused[0]!r} split is never used for pretraining (it is the benchmark's held-out "
            f"evaluation data); use {' and/or '.join(IMDB_PRETRAIN_SPLITS)}"
        )
    if not chosen or len(set(chosen)) != len(chosen):
        raise DataError(f"{source}: splits must be distinct and at least one, got {list(chosen)}")
    return chosen


def _load_split_dir(path: Path, splits: Sequence[str], origin: str) -> PretrainTexts:
    texts: list[str] = []
    inputs: list[dict[str, Any]] = []
    for split in splits:
        shards = hub_split_shards(path, split)
        split_texts = _read_texts(shards, source=str(shards[0].parent / f"{split}-*.parquet")).texts
        texts.extend(split_texts)
        files = {shard.name: sha256_file(shard) for shard in shards}
        inputs.append({"name": split, "split": split, "files": files, "documents": len(split_texts)})
    return PretrainTexts(texts, _texts_info(origin, inputs, splits))


def _load_hub_id(repo_id: str, splits: Sequence[str], downloader: Callable[..., str] | None) -> PretrainTexts:
    # Only the requested splits' shards are downloaded: the test shard is not even fetched.
    patterns = [f"{HUB_CONFIG_DIR}/{split}-*.parquet" for split in splits]
    what_instead = f"a local folder in the Hub layout ({HUB_CONFIG_DIR}/{{split}}-*.parquet) or a text file"
    local = download_hub_dataset(repo_id, patterns, what_instead=what_instead, downloader=downloader)
    return _load_split_dir(local, splits, f"hf://datasets/{repo_id}")


def _load_text_file(path: Path) -> PretrainTexts:
    if _TEST_FILE_NAME.match(path.name):
        raise DataError(
            f"{path}: the file name says it is a test split, and test texts are never used for pretraining "
            "(rename the file if it is not test data)"
        )
    rows = _read_texts([path], source=str(path))
    part = {"name": path.name, "split": None, "files": {path.name: sha256_file(path)}, "documents": len(rows.texts)}
    if rows.blank_lines:
        part["blank_lines_skipped"] = rows.blank_lines
    return PretrainTexts(rows.texts, _texts_info(str(path), [part], []))


def _read_texts(paths: Sequence[Path], *, source: str) -> FileRows:
    return read_files(paths, TEXT_ONLY, source=source, text_rules=[_no_sentinel])


def _no_sentinel(text: str) -> str | None:
    # the tokenizer maps it to a sentinel id, which span corruption reserves for its span markers
    sentinel = _SENTINEL_TEXT.search(text)
    return f"text contains the sentinel token {sentinel.group()}" if sentinel else None


def _texts_info(origin: str, inputs: list[dict[str, Any]], splits: Sequence[str]) -> dict[str, Any]:
    return {
        "source": origin,
        "splits": list(splits),
        "inputs": inputs,
        "documents": sum(part["documents"] for part in inputs),
        "test_split_used": False,  # every path above refuses a test split before reading anything
    }


# ---------------------------------------------------------------------------------------------------------
# Overlap with test texts


@dataclass(frozen=True)
class Overlap:
    """How many pretraining documents are, character for character, also test texts."""

    documents: int  # pretraining documents whose text is a test text (duplicates counted)
    distinct_texts: int  # distinct test texts among them

    def as_dict(self) -> dict[str, int]:
        return {"documents": self.documents, "distinct_texts": self.distinct_texts}


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def count_overlap(pretrain_texts: Iterable[str], test_texts: Iterable[str]) -> Overlap:
    """Count pretraining documents whose exact text (SHA-256 of its UTF-8) is also a test text.

    What we decided, and why: overlap is counted and recorded, never removed behind the caller's back.
    IMDb has 123 test reviews whose text also occurs in ``train``; those are training data of the
    benchmark itself (fine-tuning sees them, labelled), so pretraining on them exposes nothing the benchmark
    does not already expose, and dropping them would make "train" mean something else here than there.
    ``unsupervised`` has 270 documents (266 distinct texts) equal to test reviews, which fine-tuning never
    sees: removing them is a choice a run can make with :func:`exclude_texts`, which records what it removed.
    Matching is exact; near-duplicates (whitespace, case, HTML) are not detected.
    """
    test = {text_digest(text) for text in test_texts}
    shared = [digest for digest in map(text_digest, pretrain_texts) if digest in test]
    return Overlap(documents=len(shared), distinct_texts=len(set(shared)))


def assert_disjoint(pretrain_texts: Iterable[str], test_texts: Iterable[str], *, allowed: int = 0) -> Overlap:
    """:func:`count_overlap`, raising :class:`DataError` when more than ``allowed`` documents overlap."""
    overlap = count_overlap(pretrain_texts, test_texts)
    if overlap.documents > allowed:
        raise DataError(
            f"{overlap.documents} pretraining documents ({overlap.distinct_texts} distinct texts) are test texts; "
            f"at most {allowed} allowed"
        )
    return overlap


def record_test_overlap(texts: PretrainTexts, test_texts: Iterable[str]) -> dict[str, Any]:
    """Count the overlap with ``test_texts`` per input and in total, and store it in ``texts.info``."""
    test = list(test_texts)
    per_input = {name: count_overlap(part, test).as_dict() for name, part in texts.parts()}
    record = {"inputs": per_input, "total": count_overlap(texts.texts, test).as_dict(), "test_texts": len(test)}
    texts.info["test_overlap"] = record
    return record


def exclude_texts(
    texts: PretrainTexts, excluded: Iterable[str], *, reason: str, parts: Sequence[str] | None = None
) -> PretrainTexts:
    """A copy of ``texts`` without the documents whose exact text is in ``excluded``; counts go into ``info``.

    ``parts`` limits the exclusion to those inputs (split or file names), e.g. ``["unsupervised"]``.
    """
    names = [name for name, _ in texts.parts()]
    unknown = sorted(set(parts or ()) - set(names))
    if unknown:
        raise ValueError(f"no input named {unknown[0]!r}; the inputs are {names}")
    drop = {text_digest(text) for text in excluded}
    kept: list[str] = []
    inputs: list[dict[str, Any]] = []
    for part, (name, part_texts) in zip(texts.info["inputs"], texts.parts(), strict=True):
        applies = parts is None or name in parts
        part_kept = [text for text in part_texts if not applies or text_digest(text) not in drop]
        kept.extend(part_kept)
        removed = len(part_texts) - len(part_kept)
        inputs.append({**part, "documents": len(part_kept), "excluded": part.get("excluded", 0) + removed})
    info = {**texts.info, "inputs": inputs, "documents": len(kept)}
    exclusion = {"reason": reason, "inputs": list(parts or names), "documents": len(texts) - len(kept)}
    info["exclusions"] = [*texts.info.get("exclusions", []), exclusion]
    return PretrainTexts(kept, info)


# ---------------------------------------------------------------------------------------------------------
# Packing


@dataclass
class PretrainData:
    """Raw token chunks of the training and validation documents, and how to corrupt them.

    ``train`` and ``validation`` are ``[chunks, raw_length]`` int32 arrays; span corruption turns each chunk
    into exactly ``input_length`` input and ``target_length`` target tokens.
    """

    train: np.ndarray
    validation: np.ndarray
    raw_length: int
    input_length: int
    target_length: int
    noise_density: float
    mean_noise_span_length: float
    sentinels: np.ndarray
    eos_id: int
    train_documents: np.ndarray  # indices into the texts, in packing order
    validation_documents: np.ndarray
    info: dict[str, Any]


def split_documents(count: int, validation_documents: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` document indices, both in a seeded random order (the packing order)."""
    if not 0 <= validation_documents < count:
        raise DataError(f"validation_documents must be in [0, {count}) for {count} documents")
    order = np.random.default_rng([_check_seed(seed), _SPLIT_STREAM]).permutation(count)
    return order[validation_documents:], order[:validation_documents]


def tokenize_documents(texts: Sequence[str], tokenizer: T5Tokenizer) -> list[np.ndarray]:
    """Token ids of each text as int32, ``</s>`` last (the tokenizer appends it)."""
    result: list[np.ndarray] = []
    for first in range(0, len(texts), _TOKENIZE_BATCH):
        encoded = tokenizer.encode(list(texts[first : first + _TOKENIZE_BATCH]))
        result.extend(np.asarray(ids, dtype=np.int32) for ids in encoded)
    return result


def pack(documents: Sequence[np.ndarray], raw_length: int) -> tuple[np.ndarray, int]:
    """Concatenate ``documents`` and cut into ``[chunks, raw_length]``; returns the chunks and the dropped tail."""
    stream = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int32)
    chunks = len(stream) // raw_length
    return stream[: chunks * raw_length].reshape(chunks, raw_length), len(stream) - chunks * raw_length


def build_pretrain_data(
    texts: PretrainTexts | Sequence[str],
    tokenizer: T5Tokenizer,
    *,
    input_length: int = 512,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    validation_documents: int = 1000,
    seed: int = 0,
) -> PretrainData:
    """Split, tokenize and pack ``texts`` into chunks that corrupt to exactly ``input_length`` tokens."""
    documents = texts.texts if isinstance(texts, PretrainTexts) else list(texts)
    raw_length, target_length = compute_lengths(input_length, noise_density, mean_noise_span_length)
    sentinels = sentinel_ids(tokenizer)
    num_noise, num_spans = span_counts(raw_length, noise_density, mean_noise_span_length)
    if num_spans > len(sentinels):
        raise DataError(f"input_length {input_length} needs {num_spans} sentinels; the tokenizer has {len(sentinels)}")
    train_idx, validation_idx = split_documents(len(documents), validation_documents, seed)
    train, train_info = _pack_part(documents, train_idx, tokenizer, raw_length, sentinels, "train")
    validation, validation_info = _pack_part(documents, validation_idx, tokenizer, raw_length, sentinels, "validation")
    info = {
        "texts": texts.info if isinstance(texts, PretrainTexts) else {"source": "<texts>", "documents": len(documents)},
        # known only for texts read by load_pretrain_texts, which refuses test splits; None = not known
        "test_split_used": texts.info["test_split_used"] if isinstance(texts, PretrainTexts) else None,
        "seed": seed,
        "raw_length": raw_length,
        "input_length": input_length,
        "target_length": target_length,
        "noise_density": noise_density,
        "mean_noise_span_length": mean_noise_span_length,
        "noise_tokens_per_example": num_noise,
        "noise_spans_per_example": num_spans,
        "document_separator": "</s>",
        "train": train_info,
        "validation": validation_info,
    }
    return PretrainData(
        train=train,
        validation=validation,
        raw_length=raw_length,
        input_length=input_length,
        target_length=target_length,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        sentinels=sentinels,
        eos_id=tokenizer.eos_token_id,
        train_documents=train_idx,
        validation_documents=validation_idx,
        info=info,
    )


def _pack_part(
    documents: Sequence[str],
    indices: np.ndarray,
    tokenizer: T5Tokenizer,
    raw_length: int,
    sentinels: np.ndarray,
    name: str,
) -> tuple[np.ndarray, dict[str, int]]:
    """Tokenize and pack the documents at ``indices``: ``(chunks, counts)``."""
    ids = tokenize_documents([documents[i] for i in indices], tokenizer)
    _check_no_sentinels(ids, indices, sentinels)
    chunks, dropped = pack(ids, raw_length)
    if len(chunks) == 0 and len(indices) > 0:
        raise DataError(f"the {len(indices)} {name} documents hold fewer than {raw_length} tokens: not one example")
    counts = {"documents": len(indices), "tokens": sum(map(len, ids)), "examples": len(chunks)}
    return chunks, {**counts, "tokens_dropped": dropped}


def _check_no_sentinels(ids: Sequence[np.ndarray], indices: np.ndarray, sentinels: np.ndarray) -> None:
    """A sentinel id inside a document would be taken for a span marker (the text check should catch it)."""
    if not ids:
        return
    found = np.isin(np.concatenate(ids), sentinels)
    if found.any():
        ends = np.cumsum([len(doc) for doc in ids])
        where = int(np.searchsorted(ends, int(np.argmax(found)), side="right"))
        raise DataError(f"document {indices[where]} (0-based, in source order) encodes to a sentinel token id")


def _check_seed(seed: int) -> int:
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    return seed


# ---------------------------------------------------------------------------------------------------------
# The data of a run: its texts, minus exact test copies, packed


def prepare_texts(cfg: PretrainDataSettings) -> PretrainTexts:
    """Read the pretraining texts, record their overlap with the test texts, and drop exact test copies.

    The decision (recorded in ``info["exclusions"]``): exact copies of test texts are dropped from every input
    except an IMDb ``train`` split. IMDb's ``unsupervised`` split holds 270 documents (266 distinct texts) that
    are test reviews; pretraining on them would let the backbone see test reviews that fine-tuning never sees.
    The 123 test texts that also occur in ``train`` are kept: they are the benchmark's own labelled training
    data, which fine-tuning sees anyway. ``exclude_test_overlap=False`` keeps everything (still counted).
    """
    texts = load_pretrain_texts(cfg.data, cfg.splits)
    test = _test_texts(cfg)
    if test is None:
        texts.info["test_overlap"] = None
        return texts
    test_texts, origin = test
    record_test_overlap(texts, test_texts)
    texts.info["test_overlap"]["test_source"] = origin
    parts = [part["name"] for part in texts.info["inputs"] if part.get("split") != "train"]
    if cfg.exclude_test_overlap and parts:
        texts = exclude_texts(
            texts,
            test_texts,
            reason="exact copies of test texts (the IMDb train split's copies are kept: fine-tuning trains on them)",
            parts=parts,
        )
    return texts


def _test_texts(cfg: PretrainDataSettings) -> tuple[list[str], str] | None:
    """The texts never to pretrain on, and where they came from; None only when the user chose to keep them.

    A text file, or a folder without a test split, has no test texts of its own: rather than record a check that
    never ran, it needs ``test_data`` (the texts the backbone will be tested on) or ``exclude_test_overlap`` off.
    """
    if cfg.test_data is not None:
        test = load_split(cfg.test_data, "test")
        return test.texts, test.origin
    path = Path(cfg.data).expanduser()
    if path.is_file() or (path.is_dir() and not has_local_split(path, "test")):
        if not cfg.exclude_test_overlap:
            return None
        raise PretrainError(
            f"{cfg.data}: has no test split, so nothing keeps your test texts out of pretraining; pass test_data "
            "(--test-data, the texts you will test on) or set exclude_test_overlap off (--keep-test-overlap)"
        )
    try:
        test = load_split(cfg.data, "test")
    except DataError as err:
        raise PretrainError(
            f"{cfg.data}: could not read its test split to keep test texts out of pretraining ({err}); "
            "pass test_data (--test-data) or set exclude_test_overlap off (--keep-test-overlap)"
        ) from err
    return test.texts, test.origin


def build_data(cfg: PretrainDataSettings, tokenizer: T5Tokenizer) -> PretrainData:
    """The packed pretraining data of ``cfg`` (tokenising all of IMDb takes minutes on a small CPU)."""
    texts = prepare_texts(cfg)
    data = build_pretrain_data(
        texts,
        tokenizer,
        input_length=cfg.input_length,
        noise_density=cfg.noise_density,
        mean_noise_span_length=cfg.mean_noise_span_length,
        validation_documents=cfg.validation_documents,
        seed=cfg.seed,
    )
    data.info["built_for"] = cfg.data_settings()
    return data


# ---------------------------------------------------------------------------------------------------------
# Batches


class PretrainBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, input_length] long
    labels: torch.Tensor  # [B, target_length] long


def corrupt_chunks(data: PretrainData, chunks: np.ndarray, rngs: Sequence[np.random.Generator]) -> PretrainBatch:
    """Span-corrupt each chunk with its own generator and stack into a batch."""
    pairs = [
        span_corrupt(chunk, rng, data.sentinels, data.eos_id, data.noise_density, data.mean_noise_span_length)
        for chunk, rng in zip(chunks, rngs, strict=True)
    ]
    inputs = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.int64))
    labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    expected = (len(chunks), data.input_length), (len(chunks), data.target_length)
    if (tuple(inputs.shape), tuple(labels.shape)) != expected:
        raise AssertionError(f"corrupted shapes {tuple(inputs.shape)}, {tuple(labels.shape)}; expected {expected}")
    return PretrainBatch(inputs, labels)


def example_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example's noise: independent of batch size and of the order of the epoch."""
    return np.random.default_rng([_check_seed(seed), stream, epoch, index])


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The chunk order of ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([_check_seed(seed), _ORDER_STREAM, epoch]).permutation(count)


def batches_per_epoch(data: PretrainData, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is left out so every batch has one shape)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return len(data.train) // batch_size


def train_batches(
    data: PretrainData, batch_size: int, *, seed: int, epoch: int, start: int = 0
) -> Iterator[PretrainBatch]:
    """The training batches of ``epoch`` from batch index ``start`` on (``start > 0`` resumes a run)."""
    order = epoch_order(len(data.train), seed, epoch)
    for batch in range(start, batches_per_epoch(data, batch_size)):
        yield train_batch(data, batch_size, seed=seed, epoch=epoch, index=batch, order=order)


def train_batch(
    data: PretrainData, batch_size: int, *, seed: int, epoch: int, index: int, order: np.ndarray | None = None
) -> PretrainBatch:
    """Training batch ``index`` of ``epoch`` on its own (``order``: that epoch's :func:`epoch_order`, if known)."""
    if not 0 <= index < batches_per_epoch(data, batch_size):
        raise IndexError(f"batch {index} of an epoch of {batches_per_epoch(data, batch_size)} batches")
    order = epoch_order(len(data.train), seed, epoch) if order is None else order
    indices = order[index * batch_size : (index + 1) * batch_size]
    rngs = [example_rng(seed, _TRAIN_STREAM, epoch, int(i)) for i in indices]
    return corrupt_chunks(data, data.train[indices], rngs)


def validation_batches(data: PretrainData, batch_size: int, *, seed: int = 0) -> Iterator[PretrainBatch]:
    """Every validation chunk once, in order, with the same noise on every call (the last batch may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for first in range(0, len(data.validation), batch_size):
        indices = range(first, min(first + batch_size, len(data.validation)))
        rngs = [example_rng(seed, _VALIDATION_STREAM, 0, i) for i in indices]
        yield corrupt_chunks(data, data.validation[first : first + batch_size], rngs)
