"""Read one file of texts, labelled or not: the one reader under fine-tuning and pretraining.

Formats, by the file name: ``.csv`` (a header row names the columns; the delimiter is the one of ``,`` ``;``
tab ``|`` whose split of the header holds every column asked for, comma when none or several do), ``.tsv``
(tab-separated, a header row), ``.jsonl`` (JSON lines: one object per line), ``.json`` (a JSON array of objects,
or JSON lines), ``.parquet``, and, for texts without labels, ``.txt`` (one text per line). Which columns hold
what is declared once, in :class:`Columns` (default: IMDb's ``text`` and ``label``, labels 0/1/negative/positive);
a reader of a new format is one function in ``_FORMATS`` that yields ``(where, record)`` pairs.

Text formats are decoded as UTF-8 (a byte-order mark at the start is dropped). Every record is checked where it
is read, and a problem is one :class:`DataError` line, ``{file}: {where}: {problem}``, where ``where`` is
``data row N (1-based, header not counted; line L)`` in a CSV or TSV, ``line N (1-based)`` in JSON lines and text
files, ``element N (1-based)`` in a JSON array and ``row N (1-based)`` in parquet. A blank line holds no record
(counted, :attr:`FileRows.blank_lines`). An empty
or whitespace-only text is an error, unless the caller asks ``skip_empty``: then the row is left out and counted
with where it was (:class:`SkippedRows`), so the count can be recorded beside the results. Nothing is dropped
silently.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import T5PeftError

UNLABELLED = -1  # the label of a row without one (GLUE test splits)
SKIPPED_SHOWN = 10  # positions of skipped rows kept for the record; the count is always complete
# csv.field_size_limit takes a C long, which is 32 bits on Windows
_CSV_LIMIT_CEILING = 2**31 - 1

TextRule = Callable[[str], str | None]  # the problem with a text, or None when it is fine
Record = Mapping[str, object]
# (where, record): where names the position for messages; record None is a blank line, which holds no record
Rows = Iterator[tuple[str, Record | None]]


class DataError(T5PeftError, ValueError):
    """A data source is missing, malformed or holds an invalid record."""


class EmptyTextError(DataError):
    """A row whose text is empty or whitespace only (``skip_empty`` leaves such rows out instead)."""


@dataclass(frozen=True)
class Columns:
    """Which columns of a file hold the text(s) and the label, and the classes the labels name.

    ``label=None`` reads texts only (pretraining). A label is a class index (``0 <= label < len(classes)``), the
    index written as a string, a class name or the class's alias (its label word; case and surrounding spaces
    ignored), or, for a two-class task whose classes are named False/True, a JSON boolean. With
    ``unlabelled_rows``, ``-1`` (an integer or ``"-1"``) marks an unlabelled row (GLUE's test splits): such rows
    are never scored; they are left out and counted (:attr:`FileRows.unlabelled`); otherwise -1 is an error.
    ``more_texts`` are further text columns (sentence pairs), read beside ``text``.
    """

    text: str = "text"
    label: str | None = "label"
    classes: tuple[str, ...] = ("negative", "positive")
    more_texts: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # another accepted name per class (its label word), or none
    unlabelled_rows: bool = False  # -1 marks an unlabelled row (left out, counted) instead of being an error

    def __post_init__(self) -> None:
        texts = (self.text, *self.more_texts)
        if not all(texts) or self.label in texts or len(set(texts)) != len(texts):
            raise ValueError(f"the text columns must be named, differ, and differ from the label column, got {self!r}")
        distinct = {name.strip().lower() for name in self.classes}
        if self.label is not None and (len(self.classes) < 2 or len(distinct) != len(self.classes)):
            raise ValueError(f"a labelled file needs at least two distinct class names, got {self.classes}")
        if self.aliases and len(self.aliases) != len(self.classes):
            raise ValueError(f"one alias per class, got {self.aliases} for {self.classes}")

    @property
    def texts(self) -> tuple[str, ...]:
        """The text columns, ``text`` first."""
        return (self.text, *self.more_texts)

    @property
    def names(self) -> tuple[str, ...]:
        """The columns that are read, texts first."""
        return self.texts if self.label is None else (*self.texts, self.label)

    def label_index(self, value: object, source: str) -> int | None:
        """The class index of a label as written in a file, None for an unlabelled row (-1); ``source`` names
        where it was, for the error."""
        index: int | None = None
        if isinstance(value, bool):  # bool is an int subclass: only a False/True class name takes it
            index = self._label_words.get(str(value).lower()) if self._boolean else None
        elif isinstance(value, int) and value == UNLABELLED and self.unlabelled_rows:
            return None
        elif isinstance(value, int) and 0 <= value < len(self.classes):
            index = value
        elif isinstance(value, str):
            if value.strip() == str(UNLABELLED) and self.unlabelled_rows:
                return None
            index = self._label_words.get(value.strip().lower())
        if index is None:
            raise DataError(f"{source}: label {value!r} is not one of {self._label_choices}")
        return index

    @cached_property
    def _boolean(self) -> bool:
        return [name.lower() for name in self.classes] == ["false", "true"]

    @cached_property
    def _label_words(self) -> dict[str, int]:
        aliases = {name.strip().lower(): index for index, name in enumerate(self.aliases)}
        words = {name.strip().lower(): index for index, name in enumerate(self.classes)}
        return {**aliases, **words, **{str(index): index for index in range(len(self.classes))}}

    @cached_property
    def _label_choices(self) -> str:
        indices = ", ".join(str(index) for index in range(len(self.classes)))
        names = ", ".join(repr(name) for name in self.classes)
        legend = ", ".join(f"{index} = {name}" for index, name in enumerate(self.classes))
        pairs = zip(self.aliases, self.classes, strict=False)
        extra = [alias for alias, name in pairs if alias.lower() != name.lower()]
        also = f"; label words {', '.join(map(repr, extra))} also accepted" if extra else ""
        unlabelled = "; -1 = unlabelled" if self.unlabelled_rows else ""
        return f"{indices}, {names} ({legend}{also}{unlabelled})"


LABELLED = Columns()
TEXT_ONLY = Columns(label=None)


@dataclass(frozen=True)
class SkippedRows:
    """Rows left out because their text was empty (``skip_empty``): how many, and where the first few were."""

    count: int = 0
    first: tuple[str, ...] = ()  # "{file}: {where}" of the first SKIPPED_SHOWN

    @classmethod
    def of(cls, positions: Sequence[str]) -> SkippedRows:
        return cls(len(positions), tuple(positions[:SKIPPED_SHOWN]))

    def plus(self, other: SkippedRows) -> SkippedRows:
        return SkippedRows(self.count + other.count, (self.first + other.first)[:SKIPPED_SHOWN])

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "first": list(self.first)}


@dataclass
class FileRows:
    """What one or more files held: texts, labels (``None`` when not read), blank lines and skipped rows."""

    texts: list[str]
    labels: list[int] | None
    blank_lines: int = 0
    skipped: SkippedRows = field(default_factory=SkippedRows)
    more: dict[str, list[str]] = field(default_factory=dict)  # the further text columns, row for row
    unlabelled: SkippedRows = field(default_factory=SkippedRows)  # rows with label -1, left out


# ---------------------------------------------------------------------------------------------------------
# Entry points


def readable_suffixes(columns: Columns) -> tuple[str, ...]:
    """The file name endings :func:`read_file` reads with ``columns`` (``.txt`` only without labels)."""
    return tuple(suffix for suffix in _FORMATS if columns.label is None or suffix not in _TEXT_ONLY_FORMATS)


def read_file(
    path: Path, columns: Columns = LABELLED, *, skip_empty: bool = False, text_rules: Sequence[TextRule] = ()
) -> FileRows:
    """The records of one file; :class:`DataError` for an unreadable file, a bad record or no records."""
    return read_files([path], columns, source=str(path), skip_empty=skip_empty, text_rules=text_rules)


def read_files(
    paths: Sequence[Path],
    columns: Columns = LABELLED,
    *,
    source: str,
    skip_empty: bool = False,
    text_rules: Sequence[TextRule] = (),
) -> FileRows:
    """The records of ``paths`` (shards of one split), in order; ``source`` names them all when none has a row."""
    rows = FileRows([], None if columns.label is None else [], more={name: [] for name in columns.more_texts})
    for path in paths:
        _read_into(rows, path, columns, skip_empty, text_rules)
    if not rows.texts and rows.unlabelled.count:
        raise DataError(
            f"{source}: no labelled rows: all {rows.unlabelled.count:,} have label -1 (unlabelled; a GLUE test split "
            "hides its labels: test on the validation split)"
        )
    if not rows.texts:
        raise DataError(f"{source}: no rows")
    return rows


def check_text(value: object, source: str, *, skip_empty: bool = False, rules: Sequence[TextRule] = ()) -> str | None:
    """``value`` if it is a usable text; None for an empty one under ``skip_empty``; else :class:`DataError`."""
    if value is None:
        raise DataError(f"{source}: text is missing")
    if not isinstance(value, str):
        raise DataError(f"{source}: text must be a string, got {type(value).__name__}")
    if not value.strip():
        if skip_empty:
            return None
        raise EmptyTextError(f"{source}: text is empty or whitespace only")
    for rule in rules:
        problem = rule(value)
        if problem:
            raise DataError(f"{source}: {problem}")
    return value


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as UTF-8 without a leading byte-order mark; the error names the line and the byte offset."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{source}: line {line} (1-based): bytes that are not valid UTF-8 at byte offset {offset}"
        ) from exc


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_chunks(iter(lambda: handle.read(1 << 20), b""))


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def unsupported_file_type(path: Path, suffixes: Sequence[str]) -> DataError:
    return DataError(f"{path}: unsupported file type; expected {', '.join(suffixes[:-1])} or {suffixes[-1]}")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pyarrow's and the csv module's can span several)."""
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------------------------------------
# Records: the checks every format shares


def _read_into(rows: FileRows, path: Path, columns: Columns, skip_empty: bool, text_rules: Sequence[TextRule]) -> None:
    skipped: list[str] = []
    unlabelled: list[str] = []
    with closing(_rows_of(path, columns)) as records:
        for where, record in records:
            if record is None:
                rows.blank_lines += 1
                continue
            position = f"{path}: {where}"
            texts = [
                check_text(record[name], _in_column(position, name, columns), skip_empty=skip_empty, rules=text_rules)
                for name in columns.texts
            ]
            if any(text is None for text in texts):
                skipped.append(position)
                continue
            label = None
            if rows.labels is not None and columns.label is not None:
                label = columns.label_index(record[columns.label], _in_column(position, columns.label, columns))
                if label is None:
                    unlabelled.append(position)
                    continue
                rows.labels.append(label)
            rows.texts.append(cast(str, texts[0]))
            for name, text in zip(columns.more_texts, texts[1:], strict=True):
                rows.more[name].append(cast(str, text))
    rows.skipped = rows.skipped.plus(SkippedRows.of(skipped))
    rows.unlabelled = rows.unlabelled.plus(SkippedRows.of(unlabelled))


def _in_column(position: str, name: str, columns: Columns) -> str:
    """Where a value was: the row, and the column when the file has several text columns (sentence pairs)."""
    return f"{position}: column {name!r}" if columns.more_texts else position


def _rows_of(path: Path, columns: Columns) -> Rows:
    suffix = path.suffix.lower()
    if suffix not in readable_suffixes(columns):
        raise unsupported_file_type(path, readable_suffixes(columns))
    return _FORMATS[suffix](path, columns)


def _check_columns(found: Sequence[str], columns: Columns, path: Path) -> None:
    missing = [name for name in columns.names if name not in found]
    if missing:
        raise DataError(f"{path}: missing {_listed(missing, 'column')}; found columns: {', '.join(found) or 'none'}")


def _listed(names: Sequence[str], what: str) -> str:
    return f"{' and '.join(names)} {what}{'s' if len(names) > 1 else ''}"


# ---------------------------------------------------------------------------------------------------------
# Formats


CSV_DELIMITERS = (",", ";", "\t", "|")


def _csv_rows(path: Path, columns: Columns) -> Rows:
    text = decode_utf8(path.read_bytes(), str(path))
    return _delimited_rows(path, columns, text, _sniff_delimiter(text, columns))


def _tsv_rows(path: Path, columns: Columns) -> Rows:
    return _delimited_rows(path, columns, decode_utf8(path.read_bytes(), str(path)), "\t")


def _sniff_delimiter(text: str, columns: Columns) -> str:
    """The delimiter of a CSV file: the one candidate whose split of the header row names every column asked
    for; a comma when none or several do (the header check then names what is missing)."""
    first = text.split("\n", 1)[0]
    fits = []
    for delimiter in CSV_DELIMITERS:
        try:
            header = next(csv.reader([first], delimiter=delimiter), [])
        except csv.Error:
            continue
        if all(name in {field.strip() for field in header} for name in columns.names):
            fits.append(delimiter)
    return fits[0] if len(fits) == 1 else ","


def _delimited_rows(path: Path, columns: Columns, text: str, delimiter: str) -> Rows:
    row = 0
    with _csv_field_limit(len(text)):
        # strict: an unbalanced quote is an error, not a field that swallows the lines after it
        reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                expected = _listed(columns.names, "column")
                raise DataError(f"{path}: empty file; expected a header row naming the {expected}")
            header = [name.strip() for name in header]
            _check_columns(header, columns, path)
            positions = {name: header.index(name) for name in columns.names}
            for fields in reader:
                if not fields:  # the csv module yields [] for a blank line
                    yield f"line {reader.line_num}", None
                    continue
                row += 1
                where = f"data row {row} (1-based, header not counted; line {reader.line_num})"
                if len(fields) != len(header):
                    raise DataError(f"{path}: {where}: {len(fields)} fields but the header has {len(header)}")
                yield where, {name: fields[index] for name, index in positions.items()}
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV after data row {row} (1-based): {one_line(exc)}") from exc


@contextmanager
def _csv_field_limit(characters: int) -> Iterator[None]:
    """Let a field be as long as the whole file, for this read only.

    The csv module refuses fields over 131,072 characters by default, a guard against a runaway field holding
    the rest of a stream. Here the whole file is already in memory and an unbalanced quote is an error (strict
    mode), so no valid field can be longer than the file: its length is the tightest limit that refuses nothing
    valid. (``sys.maxsize`` would overflow the C long of the limit where that is 32 bits, Windows.) The limit is
    the csv module's, for the whole process: it is restored after the read, and t5peft reads no two files at once.
    """
    previous = csv.field_size_limit(min(max(characters, csv.field_size_limit()), _CSV_LIMIT_CEILING))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _json_rows(path: Path, columns: Columns) -> Rows:
    """A ``.json`` file: a JSON array of objects when it starts with ``[``, else JSON lines."""
    text = decode_utf8(path.read_bytes(), str(path))
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path, columns)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); expected an array of objects"
        ) from exc
    for number, record in enumerate(records, start=1):
        yield _checked_object(path, f"element {number} (1-based)", record, columns)


def _checked_object(path: Path, where: str, record: object, columns: Columns) -> tuple[str, Record]:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in columns.names if name not in record]
    if missing:
        found = ", ".join(sorted(record)) or "none"
        raise DataError(f"{path}: {where}: missing {_listed(missing, 'key')}; found keys: {found}")
    return where, record


def _jsonl_rows(path: Path, columns: Columns) -> Rows:
    for lineno, line in _numbered_lines(path):
        where = f"line {lineno} (1-based)"
        if not line.strip():
            yield where, None
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: {where}: invalid JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line"
            ) from exc
        yield _checked_object(path, where, record, columns)


def _txt_rows(path: Path, columns: Columns) -> Rows:
    for lineno, line in _numbered_lines(path):
        yield f"line {lineno} (1-based)", {columns.text: line} if line.strip() else None


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``(1-based number, line)``, split on newlines only (not on the other separators ``str.splitlines`` knows,
    such as U+0085, which real reviews contain)."""
    lines = decode_utf8(path.read_bytes(), str(path)).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another one
    return [(lineno, line.removesuffix("\r")) for lineno, line in enumerate(lines, start=1)]


def _parquet_rows(path: Path, columns: Columns) -> Rows:
    try:
        _check_columns(pq.read_schema(path).names, columns, path)
        table = pq.read_table(path, columns=list(columns.names))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({one_line(exc)})") from exc
    values = [table.column(name).to_pylist() for name in columns.names]
    for row, cells in enumerate(zip(*values, strict=True), start=1):
        yield f"row {row} (1-based)", dict(zip(columns.names, cells, strict=True))


_FORMATS: dict[str, Callable[[Path, Columns], Rows]] = {
    ".csv": _csv_rows,
    ".tsv": _tsv_rows,
    ".jsonl": _jsonl_rows,
    ".json": _json_rows,
    ".parquet": _parquet_rows,
    ".txt": _txt_rows,
}
_TEXT_ONLY_FORMATS = (".txt",)  # a text file has no label column
