"""Tests of the pretraining data (t5peft.pretrain.data) on the real IMDb texts and small files built from them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from t5peft.data import DataError
from t5peft.model import T5Config, T5ForConditionalGeneration
from t5peft.pretrain import (
    PretrainData,
    PretrainTexts,
    assert_disjoint,
    batches_per_epoch,
    build_pretrain_data,
    count_overlap,
    exclude_texts,
    load_pretrain_texts,
    record_test_overlap,
    restore,
    train_batches,
    validation_batches,
)
from t5peft.pretrain.data import epoch_order

REPO = Path(__file__).resolve().parent.parent
TRAIN_SHA256 = "c9cbbfb221b0a8173f5c4908078cb22d863f33bd1468e9a177bd48e7c09c970f"
UNSUPERVISED_SHA256 = "74e9a9fd35ad11bddd02d6b1bd6f6e3836114c2d2bd35d47f9ff25f136e1dc76"
SAMPLE = 300  # documents tokenized in these tests (the time of the whole file stays a few seconds)


@pytest.fixture(scope="module")
def imdb_texts(imdb_dir: Path) -> PretrainTexts:
    return load_pretrain_texts(imdb_dir)


@pytest.fixture(scope="module")
def sample_texts(imdb_texts: PretrainTexts) -> list[str]:
    """300 real documents from both pretraining splits."""
    picks = np.random.default_rng(0).choice(len(imdb_texts), size=SAMPLE, replace=False)
    return [imdb_texts.texts[i] for i in sorted(picks)]


@pytest.fixture(scope="module", params=[128, 512])
def packed(request: pytest.FixtureRequest, sample_texts: list[str], tokenizer) -> PretrainData:
    return build_pretrain_data(sample_texts, tokenizer, input_length=request.param, validation_documents=30, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Sources


def test_imdb_uses_unsupervised_and_train_never_test(imdb_texts: PretrainTexts) -> None:
    info = imdb_texts.info
    assert info["splits"] == ["unsupervised", "train"]
    assert [(part["name"], part["documents"]) for part in info["inputs"]] == [("unsupervised", 50000), ("train", 25000)]
    assert info["inputs"][0]["files"] == {"unsupervised-00000-of-00001.parquet": UNSUPERVISED_SHA256}
    assert info["inputs"][1]["files"] == {"train-00000-of-00001.parquet": TRAIN_SHA256}
    assert info["documents"] == len(imdb_texts) == 75000
    assert info["test_split_used"] is False
    assert [name for name, _ in imdb_texts.parts()] == ["unsupervised", "train"]


@pytest.mark.parametrize("splits", ["test", ["test"], ["train", "test"], ("unsupervised", "test")])
def test_test_split_is_refused(imdb_dir: Path, splits: list[str]) -> None:
    with pytest.raises(DataError, match="'test' split is never used for pretraining"):
        load_pretrain_texts(imdb_dir, splits)


def test_test_files_are_refused(imdb_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test-00000-of-00001.parquet: the file name says it is a test split"):
        load_pretrain_texts(imdb_dir / "plain_text" / "test-00000-of-00001.parquet")
    (tmp_path / "test.txt").write_text("a review\n", encoding="utf-8")
    with pytest.raises(DataError, match="test split"):
        load_pretrain_texts(tmp_path / "test.txt")
    (tmp_path / "contest.txt").write_text("a review\n", encoding="utf-8")
    assert load_pretrain_texts(tmp_path / "contest.txt").texts == ["a review"]


def test_one_split_and_missing_split(imdb_dir: Path) -> None:
    with pytest.raises(DataError, match="no validation-\\*.parquet files"):
        load_pretrain_texts(imdb_dir, ["validation"])
    with pytest.raises(ValueError, match="distinct"):
        load_pretrain_texts(imdb_dir, ["train", "train"])


def test_hub_id_downloads_only_the_pretraining_splits(tmp_path: Path, sample_texts: list[str]) -> None:
    shards = tmp_path / "snapshot" / "plain_text"
    shards.mkdir(parents=True)
    pq.write_table(
        pa.table({"text": sample_texts[:5], "label": [-1] * 5}), shards / "unsupervised-00000-of-00001.parquet"
    )
    pq.write_table(pa.table({"text": sample_texts[5:8], "label": [0] * 3}), shards / "train-00000-of-00001.parquet")
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(tmp_path / "snapshot")

    texts = load_pretrain_texts("stanfordnlp/imdb", downloader=fake_download)
    assert calls == [
        {
            "repo_id": "stanfordnlp/imdb",
            "repo_type": "dataset",
            "allow_patterns": ["plain_text/unsupervised-*.parquet", "plain_text/train-*.parquet"],
        }
    ]
    assert texts.texts == sample_texts[:8]
    assert texts.info["source"] == "hf://datasets/stanfordnlp/imdb"

    def offline(**kwargs: Any) -> str:
        raise OSError("no network")

    with pytest.raises(DataError, match="stanfordnlp/imdb: not a local path.*no network"):
        load_pretrain_texts("stanfordnlp/imdb", downloader=offline)


def test_text_files_give_the_same_documents(tmp_path: Path, sample_texts: list[str]) -> None:
    docs = [" ".join(text.split()) for text in sample_texts[:20]]  # one line each, as a .txt file needs
    (tmp_path / "docs.txt").write_text(
        "\n".join(docs[:10]) + "\n\n  \n" + "\n".join(docs[10:]) + "\n", encoding="utf-8"
    )
    with (tmp_path / "docs.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(docs))
    with (tmp_path / "docs.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    for suffix in ("txt", "jsonl", "csv", "parquet"):
        texts = load_pretrain_texts(tmp_path / f"docs.{suffix}")
        assert texts.texts == docs, suffix
        assert texts.info["inputs"][0]["name"] == f"docs.{suffix}"
        assert texts.info["test_split_used"] is False
    assert load_pretrain_texts(tmp_path / "docs.txt").info["inputs"][0]["blank_lines_skipped"] == 2


# Bad files: the one table of tests/test_data_files.py runs each case against load_pretrain_texts too.


# ---------------------------------------------------------------------------------------------------------
# Overlap with the test split


def test_overlap_with_test_is_counted_and_recorded(imdb_texts: PretrainTexts, imdb_test_texts: list[str]) -> None:
    """IMDb: 123 test texts also occur in train (kept: they are train data); 270 unsupervised documents
    (266 distinct texts) are test texts too."""
    texts = PretrainTexts(list(imdb_texts.texts), json.loads(json.dumps(imdb_texts.info)))
    record = record_test_overlap(texts, imdb_test_texts)
    assert record["inputs"] == {
        "unsupervised": {"documents": 270, "distinct_texts": 266},
        "train": {"documents": 123, "distinct_texts": 123},
    }
    assert record["total"] == {"documents": 393, "distinct_texts": 389}
    assert texts.info["test_overlap"] == record
    with pytest.raises(DataError, match="393 pretraining documents .389 distinct texts. are test texts"):
        assert_disjoint(texts.texts, imdb_test_texts)
    assert assert_disjoint(texts.texts, imdb_test_texts, allowed=393).documents == 393

    kept = exclude_texts(texts, imdb_test_texts, reason="equal to a test text", parts=["unsupervised"])
    assert len(kept) == 75000 - 270
    assert [part["excluded"] for part in kept.info["inputs"]] == [270, 0]
    assert kept.info["exclusions"] == [{"reason": "equal to a test text", "inputs": ["unsupervised"], "documents": 270}]
    assert count_overlap(kept.parts()[0][1], imdb_test_texts).documents == 0
    assert count_overlap(kept.parts()[1][1], imdb_test_texts).documents == 123


def test_overlap_of_small_lists() -> None:
    overlap = count_overlap(["a", "b", "b", "c"], ["b", "c", "d"])
    assert overlap.as_dict() == {"documents": 3, "distinct_texts": 2}
    assert assert_disjoint(["a"], ["b"]).documents == 0


# ---------------------------------------------------------------------------------------------------------
# Packing


def test_packing_gives_exact_lengths(packed: PretrainData, tokenizer) -> None:
    """Every example is exactly input_length / target_length tokens and restores its raw chunk."""
    lengths = {128: (141, 29), 512: (568, 114)}[packed.input_length]
    assert (packed.raw_length, packed.target_length) == lengths
    assert packed.train.shape[1] == packed.validation.shape[1] == packed.raw_length
    assert packed.train.dtype == np.int32
    batches = list(train_batches(packed, 8, seed=0, epoch=0))
    assert len(batches) == batches_per_epoch(packed, 8) == len(packed.train) // 8
    for batch in [*batches, *validation_batches(packed, 8)]:
        assert batch.input_ids.dtype == batch.labels.dtype == torch.long
        assert batch.input_ids.shape[1] == packed.input_length and batch.labels.shape[1] == packed.target_length
        assert (batch.input_ids[:, -1] == 1).all() and (batch.labels[:, -1] == 1).all()
        assert (batch.input_ids != tokenizer.pad_token_id).all()
    order = epoch_order(len(packed.train), seed=0, epoch=0)
    for row, (inputs, labels) in enumerate(zip(batches[0].input_ids, batches[0].labels, strict=True)):
        raw = restore(inputs.numpy(), labels.numpy(), packed.sentinels, packed.eos_id)
        np.testing.assert_array_equal(raw, packed.train[order[row]])


def test_packing_accounts_for_every_token(packed: PretrainData, sample_texts: list[str], tokenizer) -> None:
    info = packed.info
    for name, chunks, indices in (
        ("train", packed.train, packed.train_documents),
        ("validation", packed.validation, packed.validation_documents),
    ):
        ids = tokenizer.encode([sample_texts[i] for i in indices])
        stream = np.concatenate([np.asarray(doc) for doc in ids])
        assert info[name]["documents"] == len(indices)
        assert info[name]["tokens"] == len(stream) == chunks.size + info[name]["tokens_dropped"]
        assert info[name]["tokens_dropped"] < packed.raw_length
        np.testing.assert_array_equal(chunks.reshape(-1), stream[: chunks.size])  # documents joined by </s>
        assert (stream == tokenizer.eos_token_id).sum() == len(indices)
    assert info["input_length"] == packed.input_length and info["document_separator"] == "</s>"


def test_validation_documents_are_held_out_by_document(
    packed: PretrainData, sample_texts: list[str], tokenizer
) -> None:
    train, validation = set(packed.train_documents.tolist()), set(packed.validation_documents.tolist())
    assert len(validation) == 30 and not train & validation and train | validation == set(range(SAMPLE))
    again = build_pretrain_data(sample_texts, tokenizer, input_length=128, validation_documents=30, seed=0)
    other = build_pretrain_data(sample_texts, tokenizer, input_length=128, validation_documents=30, seed=1)
    np.testing.assert_array_equal(again.validation_documents, packed.validation_documents)
    assert set(other.validation_documents.tolist()) != validation


def test_pretrain_texts_info_is_carried(imdb_texts: PretrainTexts, tokenizer) -> None:
    few = PretrainTexts(imdb_texts.texts[:40], imdb_texts.info)
    data = build_pretrain_data(few, tokenizer, input_length=64, validation_documents=4, seed=0)
    assert data.info["texts"]["splits"] == ["unsupervised", "train"]
    assert data.info["test_split_used"] is False
    assert (
        build_pretrain_data(few.texts, tokenizer, input_length=64, validation_documents=4).info["test_split_used"]
        is None
    )


def test_too_few_documents_is_an_error(tokenizer) -> None:
    with pytest.raises(ValueError, match="fewer than 568 tokens"):
        build_pretrain_data(["A short review.", "Another one."], tokenizer, validation_documents=0)
    with pytest.raises(ValueError, match="validation_documents"):
        build_pretrain_data(["A short review."], tokenizer, validation_documents=1)


# ---------------------------------------------------------------------------------------------------------
# Batches


def _as_lists(batches) -> list[tuple[list[list[int]], list[list[int]]]]:
    return [(batch.input_ids.tolist(), batch.labels.tolist()) for batch in batches]


def test_batches_are_deterministic_and_resumable(packed: PretrainData) -> None:
    epoch = _as_lists(train_batches(packed, 4, seed=3, epoch=1))
    assert epoch == _as_lists(train_batches(packed, 4, seed=3, epoch=1))
    assert _as_lists(train_batches(packed, 4, seed=3, epoch=1, start=5)) == epoch[5:]
    assert _as_lists(train_batches(packed, 4, seed=3, epoch=2)) != epoch
    assert _as_lists(train_batches(packed, 4, seed=4, epoch=1)) != epoch
    assert _as_lists(validation_batches(packed, 4)) == _as_lists(validation_batches(packed, 4))


def test_a_batch_feeds_a_tiny_t5(sample_texts: list[str], tokenizer) -> None:
    """The batches are what the model's loss takes: random-init weights give about log(vocabulary size)."""
    data = build_pretrain_data(sample_texts[:20], tokenizer, input_length=64, validation_documents=2)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config.from_json_file(REPO / "configs" / "models" / "t5-tiny" / "config.json"))
    batch = next(train_batches(data, 2, seed=0, epoch=0))
    loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
    assert torch.isfinite(loss) and abs(loss.item() - np.log(model.config.vocab_size)) < 1.0
