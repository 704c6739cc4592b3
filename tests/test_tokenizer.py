"""Tokenizer parity with transformers' T5TokenizerFast on real IMDb reviews."""

from __future__ import annotations

from pathlib import Path

import pytest

from t5peft import load_tokenizer
from t5peft.hub import HubUnavailableError
from t5peft.tokenizer import TokenizerError, load_run_tokenizer, tokenizer_from_spiece, truncate

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reviews(imdb_test_texts) -> list[str]:
    """2,000 real reviews: 1,700 in file order, the 150 longest, and 150 with non-ASCII characters."""
    rest = range(1700, len(imdb_test_texts))
    longest = sorted(rest, key=lambda i: -len(imdb_test_texts[i]))[:150]
    taken = set(longest)
    non_ascii = [i for i in rest if not imdb_test_texts[i].isascii() and i not in taken][:150]
    texts = [imdb_test_texts[i] for i in [*range(1700), *longest, *non_ascii]]
    assert len(texts) == 2000
    assert sum("<br />" in t for t in texts) > 500
    assert sum(not t.isascii() for t in texts) >= 150
    assert max(len(t.split()) for t in texts) > 1500
    return ["Review: " + t for t in texts]


@pytest.fixture(scope="module")
def reference(t5_small_dir):
    return transformers.T5TokenizerFast.from_pretrained(t5_small_dir)


def test_ids_match_t5_tokenizer_fast(tokenizer, reference, reviews):
    assert tokenizer.encode(reviews) == reference(reviews).input_ids


def test_truncated_ids_match_t5_tokenizer_fast(tokenizer, reference, reviews):
    expected = reference(reviews, truncation=True, max_length=128).input_ids
    actual = tokenizer.encode(reviews, max_length=128)
    assert actual == expected
    assert all(ids[-1] == 1 for ids in actual)
    assert sum(len(ids) == 128 for ids in actual) > 1000


def test_tokenizer_built_from_spiece_model_matches(t5_small_dir, tokenizer, reviews, tmp_path):
    (tmp_path / "spiece.model").write_bytes((t5_small_dir / "spiece.model").read_bytes())
    from_spm = load_tokenizer(tmp_path)
    assert from_spm.vocab_size == tokenizer.vocab_size == 32100
    assert from_spm.encode(reviews[:500], max_length=128) == tokenizer.encode(reviews[:500], max_length=128)
    assert from_spm.token_to_id("<extra_id_0>") == 32099


def test_label_words_and_decode(tokenizer):
    assert tokenizer.encode(["positive", "negative"]) == [[1465, 1], [2841, 1]]
    ids = tokenizer.encode("Review: a great film.")[0]
    assert tokenizer.decode(ids) == "Review: a great film."
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith("</s>")


def test_padding_batch(tokenizer):
    batch = tokenizer(["Review: fine", "Review: a much longer review than the first"], max_length=128)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() < mask[1].sum() == ids.shape[1]
    assert (ids[0][mask[0] == 0] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize(
    ("side", "expected"),
    [("right", [10, 11, 12, 1]), ("left", [15, 16, 17, 1]), ("both", [10, 11, 17, 1])],
)
def test_truncation_sides_keep_eos(side, expected):
    ids = [10, 11, 12, 13, 14, 15, 16, 17, 1]
    assert truncate(ids, 4, side) == expected
    assert truncate(ids, 20, side) == ids


def test_truncation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="truncation side"):
        truncate([5, 1], 4, "middle")
    with pytest.raises(ValueError, match="at least 2"):
        truncate([5, 1], 1)


def test_hub_id_uses_downloader(t5_small_dir):
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(t5_small_dir)

    tok = load_tokenizer("google-t5/t5-small", downloader=fake_download)
    assert tok.encode("positive") == [[1465, 1]]
    assert calls[0]["repo_id"] == "google-t5/t5-small"
    assert "tokenizer.json" in calls[0]["allow_patterns"]


def test_hub_offline_says_what_to_pass_instead():
    def offline(**kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    with pytest.raises(HubUnavailableError, match="local folder holding tokenizer.json"):
        load_tokenizer("google-t5/t5-small", downloader=offline)


def test_hub_offline_is_one_line_naming_the_files_and_the_option(tmp_path: Path):
    """Hub errors span several lines; a model without a tokenizer of its own is told about --tokenizer."""

    def offline(**kwargs):
        raise OSError("Got: ConnectError\nAn error happened while trying to locate the files on the Hub.")

    with pytest.raises(HubUnavailableError) as caught:
        load_run_tokenizer(None, "t5-small", downloader=offline)
    message = str(caught.value)
    assert "\n" not in message and "ConnectError An error happened" in message
    assert message.startswith("the tokenizer of --model t5-small: could not download tokenizer.json, spiece.model")
    assert message.endswith("(with --tokenizer)")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="has no tokenizer of its own: pass --tokenizer"):
        load_run_tokenizer(None, str(tmp_path))


def test_bad_tokenizer_inputs(tmp_path: Path):
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor spiece.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="SentencePiece"):
        tokenizer_from_spiece(tmp_path / "spiece.model")
    with pytest.raises(TokenizerError, match="no such folder"):
        load_tokenizer(tmp_path / "missing" / "dir")
