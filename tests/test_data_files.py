"""The one reader of text files (t5peft.data.files) through both of its uses: labelled reviews for fine-tuning
(``load_split``) and documents for pretraining (``load_pretrain_texts``).

One table of bad files holds what each use must say about each file (or the texts it must read): an error names the
file, the row or line and the problem, on one line, in the same words for both uses.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t5peft.data import DataError, LabeledTexts, load_split, split_validation
from t5peft.data.files import SKIPPED_SHOWN, Columns, SkippedRows, read_file
from t5peft.pretrain import load_pretrain_texts

USES = ("labelled", "texts")


@dataclass(frozen=True)
class Reads:
    """The use reads the file, and these are the texts it reads."""

    texts: tuple[str, ...]


def _load(use: str, path: Path) -> list[str]:
    data = load_split(path, "train") if use == "labelled" else load_pretrain_texts(path)
    return data.texts


def _write(path: Path, content: str | bytes | dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    else:
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _both(pattern: str) -> tuple[str, str]:
    return pattern, pattern


# (file name, content: text, bytes or parquet columns, what load_split says, what load_pretrain_texts says)
BAD_FILES: list[tuple[str, str | bytes | dict[str, Any], str | Reads, str | Reads]] = [
    # CSV
    (
        "cols.csv",
        "review,sentiment\ngood,1\n",
        r"cols\.csv: missing text and label columns; found columns: review, sentiment",
        r"cols\.csv: missing text column; found columns: review, sentiment",
    ),
    (
        "idbody.csv",
        "id,body\n1,hello\n",
        r"idbody\.csv: missing text and label columns; found columns: id, body",
        r"idbody\.csv: missing text column; found columns: id, body",
    ),
    ("nolabel.csv", "text\ngood\n", r"nolabel\.csv: missing label column", Reads(("good",))),
    ("label2.csv", "text,label\na,0\nb,1\nc,2\n", r"label2\.csv: data row 3 .*label '2'", Reads(("a", "b", "c"))),
    ("neutral.csv", "text,label\na,positive\nb,neutral\n", r"neutral\.csv: data row 2 .*'neutral'", Reads(("a", "b"))),
    ("empty_text.csv", 'text,label\na,0\n"  ",1\n', *_both(r"empty_text\.csv: data row 2 .*empty")),
    ("space.csv", "text,label\n ,1\n", *_both(r"space\.csv: data row 1 .*text is empty or whitespace only")),
    # Quoted newlines: rows count records, the line number is the physical line.
    (
        "multiline.csv",
        'text,label\n"a\nb\nc",0\nd,-1\n',
        r"multiline\.csv: data row 2 .*line 5\).*'-1'",
        Reads(("a\nb\nc", "d")),
    ),
    ("fields.csv", "text,label\na,0,extra\n", *_both(r"fields\.csv: data row 1 .*3 fields")),
    (
        "short_row.csv",
        "text,label\nhello,1\nworld\n",
        *_both(r"short_row\.csv: data row 2 \(1-based, header not counted; line 3\): 1 fields"),
    ),
    (
        "unterminated.csv",
        'text,label\nfine,1\n"unterminated\n',
        *_both(r"unterminated\.csv: malformed CSV after data row 1 \(1-based\): unexpected end"),
    ),
    ("stray_quote.csv", 'text,label\n"a"b,1\n', *_both(r"stray_quote\.csv: malformed CSV after data row 0")),
    ("bytes.csv", b"text,label\na,0\nb\xff\xfe,1\n", *_both(r"bytes\.csv: line 3 \(1-based\): .*not valid UTF-8")),
    ("header_only.csv", "text,label\n", *_both(r"header_only\.csv: no rows")),
    ("blank.csv", "", *_both(r"blank\.csv: empty file")),
    (
        "sentinel.csv",
        "text,label\nfine,1\nsee <extra_id_7> here,0\n",
        Reads(("fine", "see <extra_id_7> here")),  # fine-tuning text may hold it: it is tokenized as text
        r"sentinel\.csv: data row 2 .*text contains the sentinel token <extra_id_7>",
    ),
    # JSON lines
    (
        "json.jsonl",
        '{"text": "a", "label": 0}\n{"text": "b", label: 1}\n',
        *_both(r"json\.jsonl: line 2 .*invalid JSON"),
    ),
    ("cut.jsonl", '{"text": "ok", "label": 1}\n{"text": \n', *_both(r"cut\.jsonl: line 2 \(1-based\): invalid JSON")),
    (
        "key.jsonl",
        '{"text": "a", "sentiment": 0}\n',
        r"key\.jsonl: line 1 .*missing label key; found keys: sentiment, text",
        Reads(("a",)),
    ),
    (
        "body.jsonl",
        '{"text": "ok", "label": 1}\n{"body": "x"}\n',
        r"body\.jsonl: line 2 \(1-based\): missing text and label keys; found keys: body",
        r"body\.jsonl: line 2 \(1-based\): missing text key; found keys: body",
    ),
    (
        "lab.jsonl",
        '{"text": "a", "label": 0}\n\n{"text": "b", "label": -1}\n',
        r"lab\.jsonl: line 3 .*-1",
        Reads(("a", "b")),
    ),
    ("bool.jsonl", '{"text": "a", "label": true}\n', r"bool\.jsonl: line 1 .*label True", Reads(("a",))),
    ("ws.jsonl", '{"text": "a", "label": 1}\n{"text": " \\n ", "label": 1}\n', *_both(r"ws\.jsonl: line 2 .*empty")),
    (
        "num.jsonl",
        '{"text": 5, "label": 1}\n',
        *_both(r"num\.jsonl: line 1 \(1-based\): text must be a string, got int"),
    ),
    ("arr.json", '[{"text": "a", "label": 1}]\n', Reads(("a",)), Reads(("a",))),  # a JSON array of objects
    (
        "arr_inner.json",
        '[{"text": "a", "label": 1}, ["b", 0]]',
        *_both(r"arr_inner\.json: element 2 \(1-based\): expected a JSON object, got list"),
    ),
    (
        "arr_keys.json",
        '[{"text": "a", "label": 1},\n {"body": "b"}]',
        r"arr_keys\.json: element 2 \(1-based\): missing text and label keys; found keys: body",
        r"arr_keys\.json: element 2 \(1-based\): missing text key; found keys: body",
    ),
    (
        "arr_cut.json",
        '[{"text": "a", "label": 1},\n {"text": ',
        *_both(r"arr_cut\.json: invalid JSON \(.* at line 2, column \d+\); expected an array of objects"),
    ),
    ("arr_label.json", '[{"text": "a", "label": 7}]', r"arr_label\.json: element 1 .*label 7", Reads(("a",))),
    # TSV, and the delimiter of a CSV found by the columns its header names
    ("tab.tsv", "text\tlabel\nsome, words\t1\n", Reads(("some, words",)), Reads(("some, words",))),
    ("tab_fields.tsv", "text\tlabel\na\t1\tx\n", *_both(r"tab_fields\.tsv: data row 1 .*3 fields")),
    ("semi.csv", "text;label\na, b;1\n", Reads(("a, b",)), Reads(("a, b",))),
    ("pipe.csv", "label|text\n0|a; b\n", Reads(("a; b",)), Reads(("a; b",))),
    ("semi_bad.csv", "text;label\na;2\n", r"semi_bad\.csv: data row 1 .*label '2'", Reads(("a",))),
    ("bom.csv", "\ufefftext,label\nb,0\n", Reads(("b",)), Reads(("b",))),  # UTF-8 with a byte-order mark
    ("bom.tsv", "\ufefftext\tlabel\nb\t0\n", Reads(("b",)), Reads(("b",))),
    (
        "bytes.jsonl",
        b'{"text": "a", "label": 1}\n{"text": "\xc3(", "label": 1}\n',
        *_both(r"bytes\.jsonl: line 2 .*UTF-8"),
    ),
    ("none.jsonl", "\n\n", *_both(r"none\.jsonl: no rows")),
    # Parquet
    ("corrupt.parquet", b"PAR1 this is not parquet", *_both(r"corrupt\.parquet: not a readable parquet file")),
    (
        "columns.parquet",
        {"review": ["a"], "label": [1]},
        r"columns\.parquet: missing text column; found columns: review, label",
        r"columns\.parquet: missing text column; found columns: review, label",
    ),
    (
        "body.parquet",
        {"body": ["x"]},
        r"body\.parquet: missing text and label columns; found columns: body",
        r"body\.parquet: missing text column; found columns: body",
    ),
    (
        "label2.parquet",
        {"text": ["a", "b", "c", "d", "e"], "label": [0, 1, 0, 1, 2]},
        r"label2\.parquet: row 5 .*label 2",
        Reads(("a", "b", "c", "d", "e")),
    ),
    (
        "null.parquet",
        {"text": ["a", None], "label": [0, 1]},
        *_both(r"null\.parquet: row 2 \(1-based\): text is missing"),
    ),
    ("empty.parquet", {"text": ["a", ""], "label": [0, 1]}, *_both(r"empty\.parquet: row 2 .*empty")),
    (
        "null_label.parquet",
        {"text": ["a"], "label": pa.array([None], pa.int64())},
        r"null_label\.parquet: row 1 .*label None",
        Reads(("a",)),
    ),
    (
        "no_rows.parquet",
        {"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())},
        *_both(r"no_rows\.parquet: no rows"),
    ),
    # Text files: one document per line, for pretraining only (a text file has no labels)
    ("reviews.txt", "a review", r"reviews\.txt: unsupported file type", Reads(("a review",))),
    (
        "bytes.txt",
        b"fine\nbad \xff byte\n",
        r"bytes\.txt: unsupported file type",
        r"bytes\.txt: line 2 \(1-based\): bytes that are not valid UTF-8",
    ),
    (
        "sentinel.txt",
        "fine\nsee <extra_id_7> here\n",
        r"sentinel\.txt: unsupported file type",
        r"sentinel\.txt: line 2 \(1-based\): text contains the sentinel token",
    ),
    ("blank.txt", "\n\n", r"blank\.txt: unsupported file type", r"blank\.txt: no rows"),
    ("a.xml", "<doc/>", *_both(r"a\.xml: unsupported file type")),
]


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize(("name", "content", "labelled", "texts"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files(
    tmp_path: Path,
    use: str,
    name: str,
    content: str | bytes | dict[str, Any],
    labelled: str | Reads,
    texts: str | Reads,
) -> None:
    path = _write(tmp_path / name, content)
    expected = labelled if use == "labelled" else texts
    if isinstance(expected, Reads):
        assert tuple(_load(use, path)) == expected.texts
        return
    with pytest.raises(DataError, match=expected) as caught:
        _load(use, path)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Long fields: a CSV reads what the same data as JSON lines reads


def test_a_review_longer_than_the_csv_modules_default_limit_reads(tmp_path: Path) -> None:
    """The csv module refuses a field over 131,072 characters unless told otherwise (issue 16.8)."""
    long_review = ("A long review, " * 14_000)[:200_000]
    records = [("short and fine", 1), (long_review, 0), ("also fine", 1)]
    with (tmp_path / "long.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(records)
    lines = [json.dumps({"text": text, "label": label}) for text, label in records]
    (tmp_path / "long.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    limit_before = csv.field_size_limit()

    from_csv = load_split(tmp_path / "long.csv", "train")
    assert list(zip(from_csv.texts, from_csv.labels, strict=True)) == records
    assert load_split(tmp_path / "long.jsonl", "train").texts == from_csv.texts
    assert load_pretrain_texts(tmp_path / "long.csv").texts == [text for text, _ in records]
    assert csv.field_size_limit() == limit_before  # the limit is lifted for the read only


# ---------------------------------------------------------------------------------------------------------
# skip_empty: empty texts left out and counted, not refused


def _with_empty_rows(tmp_path: Path, suffix: str) -> Path:
    """Rows 2 and 4 (1-based) have empty or whitespace-only texts."""
    records = [("good film", 1), ("", 0), ("bad film", 0), (" \t ", 1), ("fine film", 1)]
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([("text", "label"), *records])
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in records), encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": [t for t, _ in records], "label": [y for _, y in records]}), path)
    return path


@pytest.mark.parametrize(
    ("suffix", "where"),
    [
        (
            ".csv",
            ["data row 2 (1-based, header not counted; line 3)", "data row 4 (1-based, header not counted; line 5)"],
        ),
        (".jsonl", ["line 2 (1-based)", "line 4 (1-based)"]),
        (".parquet", ["row 2 (1-based)", "row 4 (1-based)"]),
    ],
)
def test_skip_empty_leaves_out_empty_texts_and_says_where(tmp_path: Path, suffix: str, where: list[str]) -> None:
    path = _with_empty_rows(tmp_path, suffix)
    with pytest.raises(DataError, match=re.escape(f"{path.name}: {where[0]}: text is empty or whitespace only")):
        load_split(path, "train")  # refused unless asked

    data = load_split(path, "train", skip_empty=True)
    assert list(zip(data.texts, data.labels, strict=True)) == [("good film", 1), ("bad film", 0), ("fine film", 1)]
    assert data.skipped_empty == SkippedRows(2, tuple(f"{path}: {w}" for w in where))
    assert data.skipped_empty.as_dict() == {"count": 2, "first": [f"{path}: {w}" for w in where]}
    # the count describes the read, and travels with every part taken from it
    rest, validation = split_validation(data, size=1, seed=0)
    assert rest.skipped_empty == validation.skipped_empty == data.skipped_empty == data.subset([0]).skipped_empty


def test_nothing_skipped_is_recorded_as_zero(imdb_dir: Path) -> None:
    assert load_split(imdb_dir, "test", skip_empty=True).skipped_empty == SkippedRows(0, ())
    assert LabeledTexts(["a"], [0], "made up").skipped_empty.as_dict() == {"count": 0, "first": []}


def test_skip_empty_counts_every_row_and_keeps_the_first_positions(tmp_path: Path) -> None:
    texts = ["kept"] + [" "] * (SKIPPED_SHOWN + 5) + ["kept too"]
    pq.write_table(pa.table({"text": texts, "label": [1] * len(texts)}), tmp_path / "many.parquet")
    data = load_split(tmp_path / "many.parquet", "train", skip_empty=True)
    assert data.texts == ["kept", "kept too"]
    assert data.skipped_empty.count == SKIPPED_SHOWN + 5
    assert data.skipped_empty.first == tuple(f"{tmp_path / 'many.parquet'}: row {i} (1-based)" for i in range(2, 12))


def test_skip_empty_in_hub_shards_and_review_folders(tmp_path: Path) -> None:
    shards = tmp_path / "hub" / "plain_text"
    shards.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", ""], "label": [0, 1]}), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": ["  ", "b"], "label": [0, 1]}), shards / "train-00001-of-00002.parquet")
    hub = load_split(tmp_path / "hub", "train", skip_empty=True)
    assert (hub.texts, hub.skipped_empty.count) == (["a", "b"], 2)
    assert [where.split(": ")[1] for where in hub.skipped_empty.first] == ["row 2 (1-based)", "row 1 (1-based)"]

    reviews = {"train/pos/0_9.txt": b"good", "train/pos/1_8.txt": b" \n", "train/neg/0_1.txt": b"bad"}
    for name, content in reviews.items():
        _write(tmp_path / "acl" / "aclImdb" / name, content)
    with tarfile.open(tmp_path / "acl.tar.gz", "w:gz") as archive:
        for name, content in reviews.items():
            info = tarfile.TarInfo(f"aclImdb/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    for source, where in [(tmp_path / "acl", "1_8.txt"), (tmp_path / "acl.tar.gz", "member aclImdb/train/pos/1_8.txt")]:
        with pytest.raises(DataError, match="empty or whitespace only"):
            load_split(source, "train")
        data = load_split(source, "train", skip_empty=True)
        assert (data.texts, data.labels, data.skipped_empty.count) == (["bad", "good"], [0, 1], 1)
        assert data.skipped_empty.first[0].endswith(where)


def test_skip_empty_does_not_hide_a_missing_text(tmp_path: Path) -> None:
    """A null is not an empty review: a column that lost its values is still an error."""
    pq.write_table(pa.table({"text": ["a", None], "label": [0, 1]}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match=r"row 2 \(1-based\): text is missing"):
        load_split(tmp_path / "null.parquet", "train", skip_empty=True)


# ---------------------------------------------------------------------------------------------------------
# Columns: what a file's columns hold, declared once


def test_columns_name_the_text_and_label_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "own.csv", "sentiment,review\nPOS,great\nneg,awful\n")
    rows = read_file(path, Columns(text="review", label="sentiment", classes=("neg", "pos")))
    assert (rows.texts, rows.labels) == (["great", "awful"], [1, 0])
    assert read_file(path, Columns(text="review", label=None)).labels is None
    with pytest.raises(DataError, match=r"own\.csv: missing text and label columns; found columns: sentiment, review"):
        read_file(path)


def test_label_choices_are_spelled_from_the_classes(tmp_path: Path) -> None:
    path = _write(tmp_path / "three.jsonl", '{"text": "a", "label": 3}\n')
    with pytest.raises(
        DataError, match=r"label 3 is not one of 0, 1, 2, 'neg', 'neu', 'pos' \(0 = neg, 1 = neu, 2 = pos\)"
    ):
        read_file(path, Columns(classes=("neg", "neu", "pos")))


@pytest.mark.parametrize(
    "columns",
    [{"text": ""}, {"text": "x", "label": "x"}, {"classes": ("only",)}, {"classes": ("pos", "POS")}],
)
def test_columns_that_cannot_work_are_refused(columns: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Columns(**columns)
