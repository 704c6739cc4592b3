"""Tests of t5peft.data.sources on the real IMDb data and on sources built from a sample of it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from t5peft.data import DataError, LabeledTexts, dataset_checksums, load_split, split_validation

TRAIN_SHA256 = "c9cbbfb221b0a8173f5c4908078cb22d863f33bd1468e9a177bd48e7c09c970f"
TEST_SHA256 = "73e497717d9603621e1a0c3c55c81994e75b7476f14d575f88c14b9d104e385e"
SAMPLE_PER_CLASS = 100

Record = tuple[str, int]


# ---------------------------------------------------------------------------------------------------------
# Fixtures: the real data and sources built from a sample of it


@pytest.fixture(scope="module")
def imdb_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "imdb"


@pytest.fixture(scope="module")
def real(imdb_dir: Path) -> dict[str, LabeledTexts]:
    return {split: load_split(imdb_dir, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def sample(real: dict[str, LabeledTexts]) -> dict[str, list[Record]]:
    return {split: _pick_sample(data, seed) for seed, (split, data) in enumerate(real.items())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sample: dict[str, list[Record]]) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sources")
    acl_parent = root / "acl"
    _write_acl(acl_parent / "aclImdb", sample)
    tarball = root / "aclImdb_v1.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(acl_parent / "aclImdb", arcname="aclImdb")
    hub = root / "hub"
    files: dict[str, dict[str, Path]] = {"csv": {}, "jsonl": {}, "parquet": {}}
    for split, records in sample.items():
        half = len(records) // 2
        _write_parquet(hub / "plain_text" / f"{split}-00000-of-00002.parquet", records[:half])
        _write_parquet(hub / "plain_text" / f"{split}-00001-of-00002.parquet", records[half:])
        files["csv"][split] = _write_csv(root / f"{split}.csv", records)
        files["jsonl"][split] = _write_jsonl(root / f"{split}.jsonl", records)
        files["parquet"][split] = _write_parquet(root / f"{split}.parquet", records)
    return {
        "acl_dir": acl_parent / "aclImdb",
        "acl_parent": acl_parent,
        "tar": tarball,
        "hub": hub,
        "hub_shards": hub / "plain_text",
        **files,
    }


def _pick_sample(data: LabeledTexts, seed: int) -> list[Record]:
    """100 reviews per class, in shuffled order, always including the longest and non-ASCII ones."""
    longest = max(range(len(data)), key=lambda i: len(data.texts[i]))
    non_ascii = [i for i in range(len(data)) if not data.texts[i].isascii()]
    rng = random.Random(seed)
    chosen = {longest, *rng.sample(non_ascii, 10)}
    for label in (0, 1):
        pool = [i for i in range(len(data)) if data.labels[i] == label and i not in chosen]
        have = sum(data.labels[i] == label for i in chosen)
        chosen.update(rng.sample(pool, SAMPLE_PER_CLASS - have))
    order = sorted(chosen)
    rng.shuffle(order)
    return [(data.texts[i], data.labels[i]) for i in order]


def _write_acl(acl_root: Path, sample: dict[str, list[Record]]) -> None:
    """Review ``i`` of the sample becomes ``{i}_{rating}.txt`` in ``{split}/pos`` or ``{split}/neg``."""
    for split, records in sample.items():
        for index, (text, label) in enumerate(records):
            rating = 7 + index % 4 if label else 1 + index % 4
            folder = acl_root / split / ("pos" if label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index}_{rating}.txt").write_bytes(text.encode("utf-8"))


def _label_as_written(index: int, label: int) -> str:
    """Vary how labels are spelled: digits, lower-case and mixed-case words."""
    word = "positive" if label else "negative"
    return [str(label), word, word.title(), word.upper()][index % 4]


def _write_csv(path: Path, records: list[Record]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for index, (text, label) in enumerate(records):
            writer.writerow([index, text, _label_as_written(index, label)])
    return path


def _write_jsonl(path: Path, records: list[Record]) -> Path:
    lines = [
        json.dumps({"text": text, "label": label if index % 2 else _label_as_written(index, label)})
        for index, (text, label) in enumerate(records)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_parquet(path: Path, records: list[Record], **columns: pa.Array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns or {
        "text": pa.array([text for text, _ in records], pa.string()),
        "label": pa.array([label for _, label in records], pa.int64()),
    }
    pq.write_table(pa.table(table), path)
    return path


def _records(data: LabeledTexts) -> list[Record]:
    return list(zip(data.texts, data.labels, strict=True))


# ---------------------------------------------------------------------------------------------------------
# Real data


def test_real_hub_folder_has_full_balanced_splits(real: dict[str, LabeledTexts]) -> None:
    for data in real.values():
        assert len(data) == 25_000
        assert Counter(data.labels) == {0: 12_500, 1: 12_500}
        assert all(text.strip() for text in data.texts)


def test_real_hub_folder_matches_pyarrow(imdb_dir: Path, real: dict[str, LabeledTexts]) -> None:
    for split, data in real.items():
        path = imdb_dir / "plain_text" / f"{split}-00000-of-00001.parquet"
        table = pq.read_table(path)
        assert data.texts == table.column("text").to_pylist()
        assert data.labels == table.column("label").to_pylist()
        assert data.origin == str(path)


def test_real_known_facts(real: dict[str, LabeledTexts]) -> None:
    train, test = real["train"].texts, real["test"].texts
    assert len(train) - len(set(train)) == 96
    assert len(set(test) & set(train)) == 123
    assert any("<br /><br />" in text for text in train)
    assert max(len(text.split()) for text in train + test) == 2470


def test_dataset_checksums_of_shared_folder(imdb_dir: Path) -> None:
    assert dataset_checksums(imdb_dir) == {
        "train-00000-of-00001.parquet": TRAIN_SHA256,
        "test-00000-of-00001.parquet": TEST_SHA256,
    }


# ---------------------------------------------------------------------------------------------------------
# Every source format gives the same records


def test_sample_covers_hard_cases(sample: dict[str, list[Record]], real: dict[str, LabeledTexts]) -> None:
    for split, records in sample.items():
        texts = [text for text, _ in records]
        assert Counter(label for _, label in records) == {0: SAMPLE_PER_CLASS, 1: SAMPLE_PER_CLASS}
        assert max(map(len, texts)) == max(map(len, real[split].texts))
        assert any("<br />" in text for text in texts)
        assert sum(not text.isascii() for text in texts) >= 10


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("kind", ["acl_dir", "acl_parent", "tar", "csv", "jsonl", "parquet", "hub", "hub_shards"])
def test_all_sources_yield_the_same_records(
    built: dict[str, Any], sample: dict[str, list[Record]], kind: str, split: str
) -> None:
    source = built[kind][split] if kind in ("csv", "jsonl", "parquet") else built[kind]
    records = _records(load_split(source, split))
    expected = sample[split]
    assert Counter(records) == Counter(expected)
    if kind in ("acl_dir", "acl_parent", "tar"):
        # Documented aclImdb order: neg then pos, each by numeric review id (= index in the sample).
        expected = [r for r in expected if r[1] == 0] + [r for r in expected if r[1] == 1]
    assert records == expected


def test_acl_folder_and_tarball_origins(built: dict[str, Any]) -> None:
    assert "aclImdb" in load_split(built["acl_parent"], "train").origin
    assert str(built["tar"]) in load_split(built["tar"], "test").origin


def test_acl_order_is_numeric_by_review_id(tmp_path: Path) -> None:
    for name, text in [("10_1.txt", "ten"), ("2_3.txt", "two"), ("1_4.txt", "one")]:
        (tmp_path / "aclImdb" / "test" / "neg").mkdir(parents=True, exist_ok=True)
        (tmp_path / "aclImdb" / "test" / "neg" / name).write_text(text, encoding="utf-8")
    (tmp_path / "aclImdb" / "test" / "pos").mkdir()
    (tmp_path / "aclImdb" / "test" / "pos" / "5_9.txt").write_text("five", encoding="utf-8")
    data = load_split(tmp_path, "test")
    assert _records(data) == [("one", 0), ("two", 0), ("ten", 0), ("five", 1)]


def test_single_file_checksums(built: dict[str, Any]) -> None:
    for path in (built["csv"]["train"], built["tar"]):
        assert dataset_checksums(path) == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert set(dataset_checksums(built["hub"])) == {
        f"{split}-0000{i}-of-00002.parquet" for split in ("train", "test") for i in (0, 1)
    }
    acl = dataset_checksums(built["acl_parent"])
    assert set(acl) == {"aclImdb/train", "aclImdb/test"}
    assert acl == dataset_checksums(built["acl_dir"])


# ---------------------------------------------------------------------------------------------------------
# Hub id


def test_hub_id_uses_downloader(built: dict[str, Any], sample: dict[str, list[Record]]) -> None:
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(built["hub"])

    data = load_split("stanfordnlp/imdb", "test", downloader=fake_download)
    assert calls == [
        {"repo_id": "stanfordnlp/imdb", "repo_type": "dataset", "allow_patterns": ["plain_text/*.parquet"]}
    ]
    assert _records(data) == sample["test"]
    assert "stanfordnlp/imdb" in data.origin
    assert dataset_checksums("stanfordnlp/imdb") == {}


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Failed to resolve 'huggingface.co'"),
        LocalEntryNotFoundError("cannot find the requested files in the disk cache"),
        OSError("Network is unreachable"),
    ],
)
def test_hub_id_offline_explains_alternatives(error: Exception) -> None:
    def offline_download(**kwargs: Any) -> str:
        raise error

    with pytest.raises(
        DataError, match=r"could not download \S.* of dataset 'stanfordnlp/imdb' from the Hugging Face Hub"
    ) as info:
        load_split("stanfordnlp/imdb", "train", downloader=offline_download)
    message = str(info.value)
    assert "\n" not in message
    for alternative in ("stanfordnlp/imdb", "offline", "plain_text", "aclImdb", ".csv", ".jsonl", ".parquet"):
        assert alternative in message


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# The bad-file table of every file format is tests/test_data_files.py, run against fine-tuning and pretraining.


def test_bad_shard_in_hub_folder_is_named(tmp_path: Path) -> None:
    good = [("fine", 0)]
    _write_parquet(tmp_path / "plain_text" / "train-00000-of-00002.parquet", good)
    _write_parquet(
        tmp_path / "plain_text" / "train-00001-of-00002.parquet",
        [],
        text=pa.array(["ok", "bad"]),
        label=pa.array([1, 7]),
    )
    with pytest.raises(DataError, match=r"train-00001-of-00002\.parquet: row 2 .*label 7"):
        load_split(tmp_path, "train")


def test_hub_folder_without_the_split(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "plain_text" / "train-00000-of-00001.parquet", [("a", 0)])
    with pytest.raises(DataError, match=r"plain_text: no test-\*\.parquet files"):
        load_split(tmp_path, "test")


def _acl_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        _write(root / "aclImdb" / name, content)
    return root


def test_acl_folder_missing_class_folder(tmp_path: Path) -> None:
    _acl_folder(tmp_path, {"train/pos/0_9.txt": b"good"})
    with pytest.raises(DataError, match=r"aclImdb: missing folder\(s\) train/neg \("):
        load_split(tmp_path, "train")


def test_acl_folder_missing_split(tmp_path: Path) -> None:
    _acl_folder(tmp_path, {"train/pos/0_9.txt": b"good", "train/neg/0_1.txt": b"bad"})
    with pytest.raises(DataError, match=r"aclImdb: missing folder\(s\) test/neg, test/pos"):
        load_split(tmp_path / "aclImdb", "test")


def test_acl_folder_empty_class_folder(tmp_path: Path) -> None:
    _acl_folder(tmp_path, {"train/pos/0_9.txt": b"good"})
    (tmp_path / "aclImdb" / "train" / "neg").mkdir()
    with pytest.raises(DataError, match=r"train/neg: no \*\.txt review files"):
        load_split(tmp_path, "train")


@pytest.mark.parametrize(
    ("content", "problem"), [(b"caf\xe9", "not valid UTF-8"), (b" \n\t", "empty or whitespace only")]
)
def test_acl_folder_bad_review_file(tmp_path: Path, content: bytes, problem: str) -> None:
    _acl_folder(tmp_path, {"train/pos/0_9.txt": b"good", "train/neg/3_2.txt": content})
    with pytest.raises(DataError, match=rf"train/neg/3_2\.txt: .*{problem}"):
        load_split(tmp_path, "train")


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize(
    ("members", "pattern"),
    [
        ({"reviews/train/pos/0_9.txt": b"good"}, r"no aclImdb/train/neg/\*\.txt members"),
        ({"aclImdb/train/neg/0_1.txt": b"bad"}, r"no aclImdb/train/pos/\*\.txt members"),
        (
            {"aclImdb/train/pos/0_9.txt": b"good", "aclImdb/train/neg/4_1.txt": b"\xff\xfe"},
            r"member aclImdb/train/neg/4_1\.txt: .*UTF-8",
        ),
        (
            {"aclImdb/train/pos/0_9.txt": b"   ", "aclImdb/train/neg/4_1.txt": b"bad"},
            r"member aclImdb/train/pos/0_9\.txt: .*empty",
        ),
    ],
)
def test_bad_tarball(tmp_path: Path, members: dict[str, bytes], pattern: str) -> None:
    path = _tarball(tmp_path / "aclImdb_v1.tar.gz", members)
    with pytest.raises(DataError, match=r"aclImdb_v1\.tar\.gz: " + pattern):
        load_split(path, "train")


@pytest.mark.parametrize(
    "content",
    # mtime=0: a gzip header holds a timestamp, and a parameter must be the same on every collection (pytest-xdist)
    [b"not a tarball at all", gzip.compress(b"gzip but not tar" * 100, mtime=0), b"\x1f\x8b\x08\x00garbage"],
    ids=["not_an_archive", "gzip_not_tar", "cut_gzip_header"],
)
def test_corrupt_tarball(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "broken.tgz", content)
    with pytest.raises(DataError, match=r"broken\.tgz: cannot read the archive"):
        load_split(path, "train")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.999, 1.0])
def test_truncated_gzip_tarball(built: dict[str, Any], tmp_path: Path, fraction: float) -> None:
    data = built["tar"].read_bytes()
    # fraction 1.0 cuts only the last byte of the gzip trailer.
    path = _write(tmp_path / "cut.tar.gz", data[: min(int(len(data) * fraction), len(data) - 1)])
    with pytest.raises(DataError, match=r"cut\.tar\.gz: cannot read the archive"):
        load_split(path, "test")


@pytest.mark.parametrize("where", ["header_start", "mid_header", "mid_data", "before_end_marker"])
def test_truncated_plain_tarball(built: dict[str, Any], tmp_path: Path, where: str) -> None:
    full = tmp_path / "full.tar"
    with tarfile.open(full, "w") as archive:
        archive.add(built["acl_dir"], arcname="aclImdb")
    with tarfile.open(full) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
    member, last = members[len(members) // 2], members[-1]
    cut = {
        "header_start": member.offset,
        "mid_header": member.offset + 100,
        "mid_data": member.offset_data + member.size // 2,
        "before_end_marker": last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE,
    }[where]
    assert load_split(full, "train")  # the complete archive is fine
    path = _write(tmp_path / "cut.tar", full.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"cut\.tar: cannot read the archive"):
        load_split(path, "train")


@pytest.mark.parametrize("source", ["/no/such/folder", "missing/reviews.csv", "./not/here"])
def test_missing_path(source: str) -> None:
    with pytest.raises(DataError, match=rf"{source}: no such file or folder"):
        load_split(source, "train")
    with pytest.raises(DataError, match="no such file or folder"):
        dataset_checksums(source)


def test_unrecognised_folder(tmp_path: Path) -> None:
    _write(tmp_path / "notes.md", "nothing here")
    with pytest.raises(DataError, match=r"not a recognised data folder; looked for plain_text/train-\*\.parquet"):
        load_split(tmp_path, "train")


def test_bad_split_name(tmp_path: Path) -> None:
    """aclImdb folders have train and test only; Hub-layout folders have the splits their shards name."""
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(ValueError, match="train, test"):
        load_split(tmp_path, "unsupervised")
    with pytest.raises(ValueError, match="not a split name"):
        load_split(tmp_path, "../train")


# ---------------------------------------------------------------------------------------------------------
# LabeledTexts and split_validation


def _synthetic(n_neg: int, n_pos: int) -> LabeledTexts:
    labels = [0] * n_neg + [1] * n_pos
    return LabeledTexts([f"review {i}" for i in range(len(labels))], labels, "synthetic")


def test_labeled_texts_basics() -> None:
    data = _synthetic(3, 2)
    assert len(data) == 5
    part = data.subset([4, 0])
    assert _records(part) == [("review 4", 1), ("review 0", 0)]
    assert "synthetic" in part.origin
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        LabeledTexts(["a", "b"], [0], "x")


def test_split_validation_partitions_deterministically() -> None:
    data = _synthetic(600, 400)
    rest, val = split_validation(data, size=100, seed=3)
    assert (len(rest), len(val)) == (900, 100)
    assert not set(rest.texts) & set(val.texts)
    assert sorted(rest.texts + val.texts) == sorted(data.texts)
    assert Counter(val.labels) == {0: 60, 1: 40}
    # Both parts keep the original order.
    assert rest.texts == [t for t in data.texts if t in set(rest.texts)]
    again_rest, again_val = split_validation(data, size=100, seed=3)
    assert (_records(again_rest), _records(again_val)) == (_records(rest), _records(val))
    assert split_validation(data, size=100, seed=4)[1].texts != val.texts
    assert "seed 3" in val.origin


def test_split_validation_on_real_train(real: dict[str, LabeledTexts]) -> None:
    rest, val = split_validation(real["train"])
    assert (len(rest), len(val)) == (24_000, 1_000)
    assert Counter(val.labels) == {0: 500, 1: 500}
    assert Counter(rest.texts) + Counter(val.texts) == Counter(real["train"].texts)


@pytest.mark.parametrize(("n_neg", "n_pos", "size"), [(98, 2, 2), (2, 98, 2), (99, 1, 5), (1, 1, 1)])
def test_split_validation_keeps_both_classes(n_neg: int, n_pos: int, size: int) -> None:
    _, val = split_validation(_synthetic(n_neg, n_pos), size=size, seed=0)
    assert len(val) == size
    if size >= 2:
        assert set(val.labels) == {0, 1}


@pytest.mark.parametrize("size", [0, -1, 10, 11])
def test_split_validation_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="validation size"):
        split_validation(_synthetic(5, 5), size=size)
