"""Load the labelled IMDb reviews from any of the places they are commonly found.

Supported sources (detected from ``source``):

* a folder in the Hugging Face Hub layout of ``stanfordnlp/imdb``
  (``<dir>/plain_text/{split}-*.parquet``, or ``<dir>/{split}-*.parquet``);
* a Hub dataset id such as ``"stanfordnlp/imdb"`` (downloaded with ``huggingface_hub``);
* the original ``aclImdb`` folder (``aclImdb/{split}/{pos,neg}/*.txt``), or a folder holding it;
* the original tarball ``aclImdb_v1.tar.gz`` (any ``.tar``/``.tar.gz``/``.tgz``), read without extracting;
* one ``.csv``, ``.jsonl``/``.json`` (JSON lines) or ``.parquet`` file with ``text`` and ``label`` columns;
  such a file *is* the requested split. Files are read by :mod:`.files`, the one reader of text files, which
  pretraining (:mod:`t5peft.pretrain.data`) uses too; :class:`~.files.Columns` declares the columns.

Record order: Hub shards and single files keep their row order (shards in sorted file-name order).
``aclImdb`` folders and tarballs yield all ``neg`` reviews (label 0), then all ``pos`` reviews (label 1);
inside each, files are sorted by the numeric review id of ``{id}_{rating}.txt`` (so ``2_7.txt`` precedes
``10_1.txt``), files not named that way come after, sorted by name.

Every problem in the data raises :class:`DataError`; no record is ever dropped silently. Row and line
numbers in messages are 1-based. ``skip_empty=True`` leaves out rows whose text is empty or whitespace only
instead of refusing them, and counts them in :attr:`LabeledTexts.skipped_empty`.

The Hub layout rule (:func:`hub_layout_dir`, :func:`hub_split_shards`), the Hub download
(:func:`download_hub_dataset`) and what counts as a Hub id (:func:`source_kind`) are written here once, for
fine-tuning and pretraining alike.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from ..hub import HubUnavailableError, download_snapshot, looks_like_hub_id
from .files import (
    LABELLED,
    TEXT_ONLY,
    Columns,
    DataError,
    FileRows,
    SkippedRows,
    check_text,
    decode_utf8,
    read_file,
    read_files,
    readable_suffixes,
    sha256_chunks,
    sha256_file,
    unsupported_file_type,
)

SPLITS = ("train", "test")
HUB_ALLOW_PATTERNS = ["plain_text/*.parquet"]
HUB_CONFIG_DIR = "plain_text"  # the Hub layout of stanfordnlp/imdb: <dir>/plain_text/{split}-*.parquet

_CLASS_DIRS = {"neg": 0, "pos": 1}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# a name ending so is a missing file, never a Hub id
_FILE_SUFFIXES = tuple(dict.fromkeys((*readable_suffixes(TEXT_ONLY), *_TAR_SUFFIXES)))
_COMPRESSED_OPENERS: tuple[tuple[bytes, Callable[..., Any]], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)
_REVIEW_NAME = re.compile(r"^(\d+)_\d+\.txt$")
_LOCAL_ALTERNATIVES = (
    "a local source: a folder in the Hub parquet layout (plain_text/{split}-*.parquet), "
    "an aclImdb folder or aclImdb_v1.tar.gz, or a .csv/.tsv/.jsonl/.json/.parquet file with text and label columns"
)

SourceKind = Literal["file", "folder", "hub"]

__all__ = [
    "SPLITS",
    "Columns",
    "DataError",
    "LabeledTexts",
    "SkippedRows",
    "dataset_checksums",
    "download_hub_dataset",
    "has_local_split",
    "hub_layout_dir",
    "hub_split_shards",
    "is_single_split_file",
    "load_split",
    "shared_rows",
    "source_kind",
    "split_validation",
]


@dataclass
class LabeledTexts:
    """Reviews with their sentiment labels (0 = negative, 1 = positive).

    ``skipped_empty``: the rows of the source left out as empty (``skip_empty``); subsets keep it, since it
    describes the read they come from.
    """

    texts: list[str]
    labels: list[int]
    origin: str
    skipped_empty: SkippedRows = field(default_factory=SkippedRows)
    more: dict[str, list[str]] = field(default_factory=dict)  # further text columns (sentence pairs), row for row
    unlabelled: SkippedRows = field(default_factory=SkippedRows)  # rows with label -1 in the source, left out

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels ({self.origin})")
        for name, column in self.more.items():
            if len(column) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(column)} in column {name} ({self.origin})")

    def row_texts(self, index: int) -> tuple[str, ...]:
        """Every text column of row ``index``, the first text column first."""
        return (self.texts[index], *(column[index] for column in self.more.values()))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabeledTexts:
        return LabeledTexts(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            origin=f"{self.origin} [subset of {len(indices)}/{len(self)} rows]",
            skipped_empty=self.skipped_empty,
            more={name: [column[i] for i in indices] for name, column in self.more.items()},
            unlabelled=self.unlabelled,
        )


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def load_split(
    source: str | os.PathLike[str],
    split: str,
    *,
    downloader: Callable[..., str] | None = None,
    columns: Columns = LABELLED,
    skip_empty: bool = False,
    hub_config: str | None = None,
) -> LabeledTexts:
    """Read the ``split`` of ``source``; see the module docstring for the sources.

    ``split``: "train" or "test" for every source; a Hub-layout folder or id also has whatever splits its
    shards name (``validation``, ``validation_matched``). ``columns`` names the text and label columns of files
    and Hub shards (aclImdb folders and tarballs have their own layout); ``skip_empty`` leaves out empty texts
    instead of refusing them, counted in the result. ``hub_config``: the folder of a multi-task Hub dataset
    that holds the task's shards (``nyu-mll/glue``: ``sst2``); see :func:`hub_layout_dir`.
    """
    if not split or "/" in split or "*" in split:
        raise ValueError(f"not a split name: {split!r}")
    if columns.label is None:
        raise ValueError("load_split reads labelled texts; give Columns a label column")
    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind == "file":
        return _load_file(path, split, columns, skip_empty)
    if kind == "folder":
        return _load_dir(path, split, columns, skip_empty, hub_config)
    return _load_hub_id(str(source), split, downloader, columns, skip_empty, hub_config)


def source_kind(source: str | os.PathLike[str]) -> SourceKind:
    """Whether ``source`` is a local file, a local folder or a Hub dataset id; :class:`DataError` when none."""
    path = Path(source).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        return "folder"
    # datasets always have an owner; "data/reviews.csv" that does not exist is a missing file, not a Hub id
    if looks_like_hub_id(str(source), owner_required=True, file_suffixes=_FILE_SUFFIXES):
        return "hub"
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
    """True when ``source`` is one .csv/.tsv/.jsonl/.json/.parquet file: one split, with no test split of its own."""
    path = Path(source).expanduser()
    return path.is_file() and not path.name.lower().endswith(_TAR_SUFFIXES)


def shared_rows(data: LabeledTexts, reference: LabeledTexts) -> int:
    """How many rows of ``data`` have a text that also occurs, character for character, in ``reference``.

    Exact matching only: near-duplicates (whitespace, case, HTML) are not found. IMDb: 123 of the 25,000
    ``test`` rows are texts that also occur in ``train``.
    """
    seen = {reference.row_texts(i) for i in range(len(reference))}
    return sum(data.row_texts(i) in seen for i in range(len(data)))


def dataset_checksums(
    source: str | os.PathLike[str], *, hub_config: str | None = None, splits: Sequence[str] = SPLITS
) -> dict[str, str]:
    """SHA-256 (hex) of the data files ``load_split`` reads from a local ``source``, keyed by file name.

    Hub-layout folders give one entry per train/test shard, single files and tarballs one entry.
    An aclImdb folder (tens of thousands of files) gives one entry per split, ``aclImdb/{split}``, the
    SHA-256 of its manifest (one ``"{pos|neg}/{name} {sha256}"`` line per review file, sorted).
    A Hub id that is not a local path gives ``{}``.
    """
    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind == "file":
        return {path.name: sha256_file(path)}
    if kind == "folder":
        return _dir_checksums(path, hub_config, splits)
    return {}


def has_local_split(path: Path, split: str) -> bool:
    """True when the local folder ``path`` holds ``split`` in a layout :func:`load_split` reads."""
    if not path.is_dir():
        return False
    if hub_layout_dir(path) is not None:
        return bool(hub_split_shards(path, split, missing_ok=True))
    acl_root = _acl_root(path)
    return acl_root is not None and (acl_root / split).is_dir()


# ---------------------------------------------------------------------------------------------------------
# Dispatch


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


def _load_file(path: Path, split: str, columns: Columns, skip_empty: bool) -> LabeledTexts:
    name = path.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        _check_split(split)
        return _load_tar(path, split, skip_empty)
    if not name.endswith(readable_suffixes(columns)):
        raise unsupported_file_type(path, [*readable_suffixes(columns), *_TAR_SUFFIXES])
    return _labelled(read_file(path, columns, skip_empty=skip_empty), str(path))


def _load_dir(path: Path, split: str, columns: Columns, skip_empty: bool, hub_config: str | None) -> LabeledTexts:
    if hub_layout_dir(path, hub_config) is not None:
        return _load_hub_dir(path, split, columns, skip_empty, hub_config)
    acl_root = _acl_root(path)
    if acl_root is not None:
        _check_split(split)
        return _load_acl_dir(acl_root, split, skip_empty)
    looked = ", ".join(f"{folder}/{split}-*.parquet" for folder in hub_folders(hub_config))
    raise DataError(
        f"{path}: not a recognised data folder; looked for {looked}, "
        f"{split}-*.parquet, aclImdb/{split}/pos|neg and {split}/pos|neg"
    )


# ---------------------------------------------------------------------------------------------------------
# Hub layout and Hub id


def hub_folders(config: str | None = None) -> tuple[str, ...]:
    """The folders of a Hub dataset that may hold a task's shards, first match wins: the task's own (a config of
    a multi-task dataset, ``nyu-mll/glue``'s ``sst2``), then ``plain_text`` (``stanfordnlp/imdb``) and ``data``
    (``stanfordnlp/sst2``, ``fancyzhx/ag_news``)."""
    return tuple(dict.fromkeys((config or HUB_CONFIG_DIR, HUB_CONFIG_DIR, "data")))


def hub_layout_dir(path: Path, config: str | None = None) -> Path | None:
    """The folder holding the parquet shards, or None when ``path`` is not in the Hub layout."""
    for folder in hub_folders(config):
        nested = path / folder
        if nested.is_dir():
            return nested
    if any(path.glob("*.parquet")):
        return path
    return None


def hub_split_shards(path: Path, split: str, *, missing_ok: bool = False, config: str | None = None) -> list[Path]:
    """The parquet shards of ``split`` in the Hub-layout folder ``path``, in file-name order.

    ``split`` may be any split name (pretraining reads ``unsupervised``); none found is a :class:`DataError`
    unless ``missing_ok``.
    """
    shard_dir = hub_layout_dir(path, config) or path
    pattern = f"{split}-*.parquet"
    shards = sorted(shard_dir.glob(pattern))
    if not shards and not missing_ok:
        raise DataError(f"{shard_dir}: no {pattern} files for split {split!r}")
    return shards


def download_hub_dataset(
    repo_id: str, allow_patterns: Sequence[str], *, what_instead: str, downloader: Callable[..., str] | None
) -> Path:
    """The local snapshot of the files of dataset ``repo_id`` matching ``allow_patterns`` (downloaded if needed)."""
    try:
        return download_snapshot(
            repo_id, allow_patterns, repo_type="dataset", what_instead=what_instead, downloader=downloader
        )
    except HubUnavailableError as exc:
        raise DataError(f"{repo_id}: not a local path, and {exc}") from exc


def _load_hub_dir(
    path: Path, split: str, columns: Columns, skip_empty: bool, hub_config: str | None = None
) -> LabeledTexts:
    shards = hub_split_shards(path, split, config=hub_config)
    pattern = shards[0].parent / f"{split}-*.parquet"
    origin = str(shards[0]) if len(shards) == 1 else f"{pattern} ({len(shards)} shards)"
    return _labelled(read_files(shards, columns, source=origin, skip_empty=skip_empty), origin)


def _load_hub_id(
    repo_id: str,
    split: str,
    downloader: Callable[..., str] | None,
    columns: Columns,
    skip_empty: bool,
    hub_config: str | None = None,
) -> LabeledTexts:
    patterns = HUB_ALLOW_PATTERNS
    if hub_config is not None:
        patterns = [f"{folder}/*.parquet" for folder in hub_folders(hub_config)]
    local = download_hub_dataset(repo_id, patterns, what_instead=_LOCAL_ALTERNATIVES, downloader=downloader)
    data = _load_hub_dir(local, split, columns, skip_empty, hub_config)
    data.origin = f"hf://datasets/{repo_id} ({data.origin})"
    return data


def _labelled(rows: FileRows, origin: str) -> LabeledTexts:
    assert rows.labels is not None  # read with a label column
    return LabeledTexts(
        rows.texts, rows.labels, origin, skipped_empty=rows.skipped, more=rows.more, unlabelled=rows.unlabelled
    )


# ---------------------------------------------------------------------------------------------------------
# aclImdb folder and tarball


def _acl_root(path: Path) -> Path | None:
    """The aclImdb folder itself, given it or its parent; None when neither looks like one."""
    if (path / "aclImdb").is_dir():
        return path / "aclImdb"
    if path.name == "aclImdb" or any((path / split).is_dir() for split in SPLITS):
        return path
    return None


def _load_acl_dir(root: Path, split: str, skip_empty: bool) -> LabeledTexts:
    missing = [f"{split}/{name}" for name in _CLASS_DIRS if not (root / split / name).is_dir()]
    if missing:
        raise DataError(f"{root}: missing folder(s) {', '.join(missing)} (expected aclImdb/{split}/pos|neg)")
    reviews = _ReviewFiles(skip_empty)
    for class_name, label in _CLASS_DIRS.items():
        folder = root / split / class_name
        files = sorted((f for f in folder.iterdir() if f.suffix == ".txt"), key=lambda f: _review_key(f.name))
        if not files:
            raise DataError(f"{folder}: no *.txt review files")
        for file in files:
            reviews.append(reviews.check(file.read_bytes(), str(file)), label)
    return reviews.labelled(f"{root / split}/{{neg,pos}}")


def _load_tar(path: Path, split: str, skip_empty: bool) -> LabeledTexts:
    member_re = re.compile(rf"^(?:.*/)?aclImdb/{split}/(pos|neg)/([^/]+\.txt)$")
    found: dict[str, list[tuple[tuple[int, int, str], str | None]]] = {"neg": [], "pos": []}
    reviews = _ReviewFiles(skip_empty)
    for name, data in _tar_files(path, member_re):
        match = member_re.match(name)
        assert match is not None  # _tar_files only yields matching members
        found[match.group(1)].append((_review_key(match.group(2)), reviews.check(data, f"{path}: member {name}")))
    for class_name, label in _CLASS_DIRS.items():
        if not found[class_name]:
            raise DataError(f"{path}: no aclImdb/{split}/{class_name}/*.txt members in the archive")
        for _, text in sorted(found[class_name], key=lambda item: item[0]):
            reviews.append(text, label)
    return reviews.labelled(f"{path}:aclImdb/{split}/{{neg,pos}}")


class _ReviewFiles:
    """Reviews of one file each (aclImdb), checked as the file reader checks a row."""

    def __init__(self, skip_empty: bool) -> None:
        self.skip_empty = skip_empty
        self.texts: list[str] = []
        self.labels: list[int] = []
        self.skipped: list[str] = []

    def check(self, data: bytes, source: str) -> str | None:
        """The review in ``data``; None (and noted) when it is empty and ``skip_empty``."""
        text = check_text(decode_utf8(data, source), source, skip_empty=self.skip_empty)
        if text is None:
            self.skipped.append(source)
        return text

    def append(self, text: str | None, label: int) -> None:
        if text is not None:
            self.texts.append(text)
            self.labels.append(label)

    def labelled(self, origin: str) -> LabeledTexts:
        return LabeledTexts(self.texts, self.labels, origin, skipped_empty=SkippedRows.of(self.skipped))


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


def _dir_checksums(path: Path, hub_config: str | None, splits: Sequence[str]) -> dict[str, str]:
    if hub_layout_dir(path, hub_config) is not None:
        found = (hub_split_shards(path, split, missing_ok=True, config=hub_config) for split in splits)
        shards = sorted(f for split_shards in found for f in split_shards)
        return {shard.name: sha256_file(shard) for shard in shards}
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
        f"{folder.name}/{file.name} {sha256_file(file)}\n"
        for folder in (split_dir / name for name in _CLASS_DIRS)
        if folder.is_dir()
        for file in folder.iterdir()
        if file.suffix == ".txt"
    )
    return sha256_chunks(line.encode("utf-8") for line in lines)
