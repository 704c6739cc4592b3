"""Load the labelled IMDb reviews from any of the places they are commonly found.

Supported sources (detected from ``source``):

* a folder in the Hugging Face Hub layout of ``stanfordnlp/imdb``
  (``<dir>/plain_text/{split}-*.parquet``, or ``<dir>/{split}-*.parquet``);
* a Hub dataset id such as ``"stanfordnlp/imdb"`` (downloaded with ``huggingface_hub``);
* the original ``aclImdb`` folder (``aclImdb/{split}/{pos,neg}/*.txt``), or a folder holding it;
* the original tarball ``aclImdb_v1.tar.gz`` (any ``.tar``/``.tar.gz``/``.tgz``), read without extracting;
* one ``.csv``, ``.jsonl``/``.json`` (JSON lines) or ``.parquet`` file with ``text`` and ``label`` columns;
  such a file *is* the requested split.

Record order: Hub shards and single files keep their row order (shards in sorted file-name order).
``aclImdb`` folders and tarballs yield all ``neg`` reviews (label 0), then all ``pos`` reviews (label 1);
inside each, files are sorted by the numeric review id of ``{id}_{rating}.txt`` (so ``2_7.txt`` precedes
``10_1.txt``), files not named that way come after, sorted by name.

Every problem in the data raises :class:`DataError`; no record is ever dropped silently. Row and line
numbers in messages are 1-based.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import T5PeftError
from ..hub import HubUnavailableError, download_snapshot, looks_like_hub_id

SPLITS = ("train", "test")
HUB_ALLOW_PATTERNS = ["plain_text/*.parquet"]

_LABEL_WORDS = {"negative": 0, "positive": 1, "0": 0, "1": 1}
_CLASS_DIRS = {"neg": 0, "pos": 1}
_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_COMPRESSED_OPENERS: tuple[tuple[bytes, Callable[..., Any]], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)
_REVIEW_NAME = re.compile(r"^(\d+)_\d+\.txt$")
_LOCAL_ALTERNATIVES = (
    "a local source: a folder in the Hub parquet layout (plain_text/{split}-*.parquet), "
    "an aclImdb folder or aclImdb_v1.tar.gz, or a .csv/.jsonl/.parquet file with text and label columns"
)


class DataError(T5PeftError, ValueError):
    """A data source is missing, malformed or holds an invalid record."""


@dataclass
class LabeledTexts:
    """Reviews with their sentiment labels (0 = negative, 1 = positive)."""

    texts: list[str]
    labels: list[int]
    origin: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels ({self.origin})")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabeledTexts:
        return LabeledTexts(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            origin=f"{self.origin} [subset of {len(indices)}/{len(self)} rows]",
        )


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def load_split(
    source: str | os.PathLike[str],
    split: str,
    *,
    downloader: Callable[..., str] | None = None,
) -> LabeledTexts:
    """Read the ``split`` ("train" or "test") of ``source``; see the module docstring for the sources."""
    _check_split(split)
    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path, split)
    if path.is_dir():
        return _load_dir(path, split)
    if _looks_like_hub_id(str(source)):
        return _load_hub_id(str(source), split, downloader)
    raise DataError(
        f"{source}: no such file or folder (and it does not look like a Hub dataset id such as 'stanfordnlp/imdb')"
    )


def split_validation(data: LabeledTexts, size: int = 1000, seed: int = 0) -> tuple[LabeledTexts, LabeledTexts]:
    """Hold out ``size`` rows as a validation set; return ``(train_rest, validation)``.

    The hold-out is stratified by label (each class present in ``data`` gets at least one row when
    ``size >= 2``) and depends only on ``seed``. Both parts keep the original row order.
    """
    if not 1 <= size < len(data):
        raise DataError(f"validation size must be in [1, {len(data)}) for {data.origin}, got {size}")
    rng = random.Random(seed)
    by_class = _indices_by_class(data.labels)
    counts = _stratified_counts([len(idx) for idx in by_class.values()], size)
    chosen: set[int] = set()
    for indices, count in zip(by_class.values(), counts, strict=True):
        chosen.update(rng.sample(indices, count))
    rest = [i for i in range(len(data)) if i not in chosen]
    train_rest = data.subset(rest)
    validation = data.subset(sorted(chosen))
    train_rest.origin = f"{data.origin} [minus validation: {len(rest)} rows, seed {seed}]"
    validation.origin = f"{data.origin} [validation: {size} rows, seed {seed}]"
    return train_rest, validation


def is_single_split_file(source: str | os.PathLike[str]) -> bool:
    """True when ``source`` is one .csv/.jsonl/.json/.parquet file: one split, with no test split of its own."""
    path = Path(source).expanduser()
    return path.is_file() and not path.name.lower().endswith(_TAR_SUFFIXES)


def shared_rows(data: LabeledTexts, reference: LabeledTexts) -> int:
    """How many rows of ``data`` have a text that also occurs, character for character, in ``reference``.

    Exact matching only: near-duplicates (whitespace, case, HTML) are not found. IMDb: 123 of the 25,000
    ``test`` rows are texts that also occur in ``train``.
    """
    seen = set(reference.texts)
    return sum(text in seen for text in data.texts)


def dataset_checksums(source: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 (hex) of the data files ``load_split`` reads from a local ``source``, keyed by file name.

    Hub-layout folders give one entry per train/test shard, single files and tarballs one entry.
    An aclImdb folder (tens of thousands of files) gives one entry per split, ``aclImdb/{split}``, the
    SHA-256 of its manifest (one ``"{pos|neg}/{name} {sha256}"`` line per review file, sorted).
    A Hub id that is not a local path gives ``{}``.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return {path.name: _sha256_file(path)}
    if path.is_dir():
        return _dir_checksums(path)
    if _looks_like_hub_id(str(source)):
        return {}
    raise DataError(f"{source}: no such file or folder")


# ---------------------------------------------------------------------------------------------------------
# Dispatch


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


def _looks_like_hub_id(source: str) -> bool:
    # datasets always have an owner; "data/reviews.csv" that does not exist is a missing file, not a Hub id
    return looks_like_hub_id(source, owner_required=True, file_suffixes=_FILE_SUFFIXES + _TAR_SUFFIXES)


def _load_file(path: Path, split: str) -> LabeledTexts:
    name = path.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        return _load_tar(path, split)
    if name.endswith(".csv"):
        return _load_csv(path)
    if name.endswith((".jsonl", ".json")):
        return _load_jsonl(path)
    if name.endswith(".parquet"):
        return _load_parquet_files([path], str(path))
    raise DataError(f"{path}: unsupported file type; expected .csv, .jsonl, .json, .parquet, .tar, .tar.gz or .tgz")


def _load_dir(path: Path, split: str) -> LabeledTexts:
    hub_dir = _hub_layout_dir(path)
    if hub_dir is not None:
        return _load_hub_dir(hub_dir, split)
    acl_root = _acl_root(path)
    if acl_root is not None:
        return _load_acl_dir(acl_root, split)
    raise DataError(
        f"{path}: not a recognised data folder; looked for plain_text/{split}-*.parquet, "
        f"{split}-*.parquet, aclImdb/{split}/pos|neg and {split}/pos|neg"
    )


# ---------------------------------------------------------------------------------------------------------
# Hub layout and Hub id


def _hub_layout_dir(path: Path) -> Path | None:
    """The folder holding the parquet shards, or None when ``path`` is not in the Hub layout."""
    nested = path / "plain_text"
    if nested.is_dir():
        return nested
    if any(path.glob("*.parquet")):
        return path
    return None


def _load_hub_dir(shard_dir: Path, split: str) -> LabeledTexts:
    pattern = f"{split}-*.parquet"
    shards = sorted(shard_dir.glob(pattern))
    if not shards:
        raise DataError(f"{shard_dir}: no {pattern} files for split {split!r}")
    origin = str(shards[0]) if len(shards) == 1 else f"{shard_dir / pattern} ({len(shards)} shards)"
    return _load_parquet_files(shards, origin)


def _load_hub_id(repo_id: str, split: str, downloader: Callable[..., str] | None) -> LabeledTexts:
    try:
        local = download_snapshot(
            repo_id,
            HUB_ALLOW_PATTERNS,
            repo_type="dataset",
            what_instead=_LOCAL_ALTERNATIVES,
            downloader=downloader,
        )
    except HubUnavailableError as exc:
        raise DataError(f"{repo_id}: not a local path, and {exc}") from exc
    data = _load_hub_dir(_hub_layout_dir(local) or local / "plain_text", split)
    data.origin = f"hf://datasets/{repo_id} ({data.origin})"
    return data


# ---------------------------------------------------------------------------------------------------------
# Parquet


def _load_parquet_files(paths: Sequence[Path], origin: str) -> LabeledTexts:
    texts: list[str] = []
    labels: list[int] = []
    for path in paths:
        shard_texts, raw_labels = _read_parquet_columns(path)
        for row, (text, raw_label) in enumerate(zip(shard_texts, raw_labels, strict=True), start=1):
            where = f"row {row} (1-based)"
            texts.append(_check_text(text, path, where))
            labels.append(_parse_label(raw_label, path, where))
    return _non_empty(LabeledTexts(texts, labels, origin), paths[0] if len(paths) == 1 else origin)


def _read_parquet_columns(path: Path) -> tuple[list[Any], list[Any]]:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    _check_columns(names, path)
    try:
        table = pq.read_table(path, columns=["text", "label"])
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    return table.column("text").to_pylist(), table.column("label").to_pylist()


# ---------------------------------------------------------------------------------------------------------
# CSV and JSON lines


def _load_csv(path: Path) -> LabeledTexts:
    reader = csv.reader(io.StringIO(_decode_file(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file, expected a header row with text and label columns")
    header = [name.strip() for name in header]
    _check_columns(header, path)
    text_col, label_col = header.index("text"), header.index("label")
    texts: list[str] = []
    labels: list[int] = []
    for row, fields in _csv_rows(reader, path):
        where = f"data row {row} (1-based, header not counted; line {reader.line_num})"
        if len(fields) != len(header):
            raise DataError(f"{path}: {where}: {len(fields)} fields but the header has {len(header)}")
        texts.append(_check_text(fields[text_col], path, where))
        labels.append(_parse_label(fields[label_col], path, where))
    return _non_empty(LabeledTexts(texts, labels, str(path)), path)


def _csv_rows(reader: Iterator[list[str]], path: Path) -> Iterator[tuple[int, list[str]]]:
    row = 0
    try:
        for fields in reader:
            if fields:  # the csv module yields [] for blank lines, which hold no record
                row += 1
                yield row, fields
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV after data row {row} (1-based): {exc}") from exc


def _load_jsonl(path: Path) -> LabeledTexts:
    texts: list[str] = []
    labels: list[int] = []
    for lineno, record in _jsonl_records(path):
        where = f"line {lineno} (1-based)"
        missing = [key for key in ("text", "label") if key not in record]
        if missing:
            raise DataError(f"{path}: {where}: missing {' and '.join(missing)} (found keys: {sorted(record)})")
        texts.append(_check_text(record["text"], path, where))
        labels.append(_parse_label(record["label"], path, where))
    return _non_empty(LabeledTexts(texts, labels, str(path)), path)


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = _decode_bytes(raw, f"{path}: line {lineno} (1-based)")
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {lineno} (1-based): invalid JSON ({exc.msg} at column {exc.colno}); "
                    "expected one JSON object per line"
                ) from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {lineno} (1-based): expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _decode_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: line {line} (1-based): bytes that are not valid UTF-8 at byte offset {exc.start}"
        ) from exc


def _decode_bytes(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what}: bytes that are not valid UTF-8 at byte offset {exc.start}") from exc


# ---------------------------------------------------------------------------------------------------------
# aclImdb folder and tarball


def _acl_root(path: Path) -> Path | None:
    """The aclImdb folder itself, given it or its parent; None when neither looks like one."""
    if (path / "aclImdb").is_dir():
        return path / "aclImdb"
    if path.name == "aclImdb" or any((path / split).is_dir() for split in SPLITS):
        return path
    return None


def _load_acl_dir(root: Path, split: str) -> LabeledTexts:
    missing = [f"{split}/{name}" for name in _CLASS_DIRS if not (root / split / name).is_dir()]
    if missing:
        raise DataError(f"{root}: missing folder(s) {', '.join(missing)} (expected aclImdb/{split}/pos|neg)")
    texts: list[str] = []
    labels: list[int] = []
    for class_name, label in _CLASS_DIRS.items():
        folder = root / split / class_name
        files = sorted((f for f in folder.iterdir() if f.suffix == ".txt"), key=lambda f: _review_key(f.name))
        if not files:
            raise DataError(f"{folder}: no *.txt review files")
        for file in files:
            texts.append(_check_text(_decode_bytes(file.read_bytes(), str(file)), file, None))
            labels.append(label)
    return LabeledTexts(texts, labels, f"{root / split}/{{neg,pos}}")


def _load_tar(path: Path, split: str) -> LabeledTexts:
    member_re = re.compile(rf"^(?:.*/)?aclImdb/{split}/(pos|neg)/([^/]+\.txt)$")
    found: dict[str, list[tuple[tuple[int, int, str], str]]] = {"neg": [], "pos": []}
    for name, data in _tar_files(path, member_re):
        match = member_re.match(name)
        assert match is not None  # _tar_files only yields matching members
        text = _check_text(_decode_bytes(data, f"{path}: member {name}"), path, f"member {name}")
        found[match.group(1)].append((_review_key(match.group(2)), text))
    texts: list[str] = []
    labels: list[int] = []
    for class_name, label in _CLASS_DIRS.items():
        if not found[class_name]:
            raise DataError(f"{path}: no aclImdb/{split}/{class_name}/*.txt members in the archive")
        texts.extend(text for _, text in sorted(found[class_name], key=lambda item: item[0]))
        labels.extend([label] * len(found[class_name]))
    return LabeledTexts(texts, labels, f"{path}:aclImdb/{split}/{{neg,pos}}")


def _tar_files(path: Path, member_re: re.Pattern[str]) -> Iterator[tuple[str, bytes]]:
    """Stream (name, content) of the regular-file members whose name matches ``member_re``."""
    try:
        with _open_decompressed(path) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile() or not member_re.match(name):
                    continue
                handle = archive.extractfile(member)
                assert handle is not None  # regular files always have content
                yield name, handle.read()
            _check_archive_end(path, stream, archive.offset)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from exc


def _open_decompressed(path: Path) -> BinaryIO:
    # These readers (unlike tarfile's own "r|gz") raise EOFError on a cut-off stream.
    with path.open("rb") as handle:
        magic = handle.read(6)
    for prefix, opener in _COMPRESSED_OPENERS:
        if magic.startswith(prefix):
            return cast(BinaryIO, opener(path, "rb"))
    return path.open("rb")


def _check_archive_end(path: Path, stream: BinaryIO, end_offset: int) -> None:
    """Fail on a truncated archive, which tarfile would take for the end of the archive."""
    if isinstance(stream, io.BufferedReader):
        if path.stat().st_size < end_offset + tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"archive is truncated after byte {end_offset}")
        return
    while stream.read(1 << 20):  # decompressing to the end verifies the stream's end marker
        pass


def _review_key(name: str) -> tuple[int, int, str]:
    match = _REVIEW_NAME.match(name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


# ---------------------------------------------------------------------------------------------------------
# Record validation


def _check_columns(found: Sequence[str], path: Path) -> None:
    missing = [name for name in ("text", "label") if name not in found]
    if missing:
        raise DataError(
            f"{path}: missing {' and '.join(missing)} column(s); found columns: {', '.join(found) or 'none'}"
        )


def _check_text(value: object, path: Path, where: str | None) -> str:
    prefix = f"{path}: {where}" if where else str(path)
    if value is None:
        raise DataError(f"{prefix}: text is missing")
    if not isinstance(value, str):
        raise DataError(f"{prefix}: text must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{prefix}: text is empty or whitespace only")
    return value


def _parse_label(value: object, path: Path, where: str) -> int:
    label: int | None = None
    # bool is an int subclass; JSON true/false is not a valid label.
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        label = value
    elif isinstance(value, str):
        label = _LABEL_WORDS.get(value.strip().lower())
    if label is None:
        raise DataError(
            f"{path}: {where}: label {value!r} is not one of 0, 1, 'negative', 'positive' (0 = negative, 1 = positive)"
        )
    return label


def _non_empty(data: LabeledTexts, source: object) -> LabeledTexts:
    if not data.texts:
        raise DataError(f"{source}: no rows (empty split)")
    return data


# ---------------------------------------------------------------------------------------------------------
# Validation split helpers


def _indices_by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    return dict(sorted(by_class.items()))


def _stratified_counts(class_sizes: Sequence[int], size: int) -> list[int]:
    """Split ``size`` over classes proportionally (largest remainder), at least 1 each when possible."""
    total = sum(class_sizes)
    exact = [size * n / total for n in class_sizes]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0 and size >= len(counts):
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts


# ---------------------------------------------------------------------------------------------------------
# Checksums


def _dir_checksums(path: Path) -> dict[str, str]:
    hub_dir = _hub_layout_dir(path)
    if hub_dir is not None:
        shards = sorted(f for split in SPLITS for f in hub_dir.glob(f"{split}-*.parquet"))
        return {shard.name: _sha256_file(shard) for shard in shards}
    acl_root = _acl_root(path)
    if acl_root is not None:
        return {
            f"aclImdb/{split}": _acl_manifest_digest(acl_root / split)
            for split in SPLITS
            if (acl_root / split).is_dir()
        }
    raise DataError(f"{path}: not a recognised data folder (no parquet shards, no aclImdb folders)")


def _acl_manifest_digest(split_dir: Path) -> str:
    lines = sorted(
        f"{folder.name}/{file.name} {_sha256_file(file)}\n"
        for folder in (split_dir / name for name in _CLASS_DIRS)
        if folder.is_dir()
        for file in folder.iterdir()
        if file.suffix == ".txt"
    )
    return _sha256_chunks(line.encode("utf-8") for line in lines)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256_chunks(iter(lambda: handle.read(1 << 20), b""))


def _sha256_chunks(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
