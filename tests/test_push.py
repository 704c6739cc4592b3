"""``t5peft push`` and ``train --push-to-hub``: an injected HfApi-like object receives exactly the expected files of
tiny real runs (no network anywhere), the model card parses with ``huggingface_hub.ModelCard`` and states where
the weights came from and which test set the accuracy is from, and a missing token or a refused upload is one
line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx
import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError

from t5peft.cli import main
from t5peft.hub import HubUploadError
from t5peft.train.card import holds_whole_model, model_card_text
from t5peft.train.loop import train
from t5peft.train.publish import push_run
from tiny_runs import tiny_run_config, tiny_train_args

SIZES = dict(train_size=16, test_size=16, validation_size=16, max_source_length=32, batch_size=8, epochs=1)
TOKEN = "hf_test_token_never_written_0123456789"


class FakeApi:
    """Records what ``create_repo`` / ``create_branch`` / ``upload_folder`` are given, and the uploaded files' bytes
    as they were when uploaded (the staging folder is gone afterwards)."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.received: dict[str, bytes] = {}
        self.refuse = refuse

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False) -> str:
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False) -> None:
        self.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, *, repo_id: str, folder_path: str, revision=None, commit_message=None) -> None:
        self.calls.append(("upload_folder", repo_id, revision))
        if self.refuse is not None:
            raise self.refuse
        folder = Path(folder_path)
        assert all(p.is_file() for p in folder.rglob("*")), "no sub-folders"
        self.received = {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach the Hub: offline mode, and a real HfApi would fail the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a real HfApi was built in a test")

    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


@pytest.fixture(scope="module")
def lora_run(imdb_dir, t5_small_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "lora"
    train(tiny_run_config(imdb_dir, t5_small_dir, out, method="lora", **SIZES))
    return out


@pytest.fixture(scope="module")
def full_run(imdb_dir, t5_small_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "full"
    train(tiny_run_config(imdb_dir, t5_small_dir, out, method="full", **SIZES))
    return out


def parse_card(text: str) -> ModelCard:
    """The card as the Hub's library reads it; the metadata also rebuilt strictly (a malformed field raises)."""
    card = ModelCard(text)
    ModelCardData(**yaml.safe_load(text.split("---\n")[1]))
    return card


def test_push_uploads_exactly_the_adapter_files_and_the_card(lora_run):
    api = FakeApi()
    url = push_run(lora_run, "someone/tiny-lora", private=True, revision="v1", api=api)
    assert url == "https://huggingface.co/someone/tiny-lora"
    assert sorted(api.received) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert api.received[name] == (lora_run / "final" / name).read_bytes(), name
    assert api.calls == [
        ("create_repo", "someone/tiny-lora", True, True),
        ("create_branch", "someone/tiny-lora", "v1", True),
        ("upload_folder", "someone/tiny-lora", "v1"),
    ]
    results = json.loads((lora_run / "results.json").read_text())
    card = parse_card(api.received["README.md"].decode())
    data = card.data
    assert data.library_name == "peft" and data.tags[:2] == ["peft", "t5"] and "lora" in data.tags
    assert data.base_model is None  # random weights: no published base to name
    assert data.datasets == ["stanfordnlp/imdb"]  # the shared data is a folder in that dataset's Hub layout
    (evaluation,) = data.eval_results
    assert evaluation.metric_type == "accuracy" and evaluation.dataset_split == "test"
    assert evaluation.metric_value == pytest.approx(results["test"]["accuracy"])
    text = card.text
    assert "**Base weights: random.**" in text and "not Google's T5" in text
    assert f"Test set: {results['data']['test_from']}." in text
    assert f"| test | {results['test']['n']:,} | {results['test']['accuracy']:.4f} |" in text
    assert 'PeftModel.from_pretrained(base, "someone/tiny-lora")' in text
    assert '"r": 8' in text  # the method's options


def test_push_of_a_full_run_uploads_the_model_and_its_tokenizer(full_run):
    api = FakeApi()
    push_run(full_run, "someone/tiny-full", api=api)
    expected = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "spiece.model"}
    expected |= {"tokenizer_config.json", "special_tokens_map.json"}
    assert set(api.received) == expected
    assert ("create_branch", "someone/tiny-full", None, True) not in api.calls
    card = parse_card(api.received["README.md"].decode())
    assert card.data.library_name == "transformers" and "peft" not in card.data.tags
    assert "load_trained(folder)" in card.text and "PeftModel" not in card.text
    assert 'AutoModelForSeq2SeqLM.from_pretrained("someone/tiny-full")' in card.text


def test_every_final_folder_holds_the_card_and_the_run_folder_is_left_as_it_was(lora_run, full_run):
    for run in (lora_run, full_run):
        final = run / "final"
        before = {p.name: p.stat().st_mtime_ns for p in final.iterdir()}
        card = parse_card((final / "README.md").read_text())
        results = json.loads((run / "results.json").read_text())
        assert card.data.eval_results[0].metric_value == pytest.approx(results["test"]["accuracy"])
        push_run(run, "someone/again", api=FakeApi())
        assert {p.name: p.stat().st_mtime_ns for p in final.iterdir()} == before


def test_card_names_a_published_base_and_a_base_pretrained_here(lora_run):
    results = json.loads((lora_run / "results.json").read_text())
    published = {**results, "weights": "pretrained", "model": "google-t5/t5-small"}
    card = parse_card(model_card_text(published, False, "someone/x"))
    assert card.data.base_model == "google-t5/t5-small"
    assert "[`google-t5/t5-small`](https://huggingface.co/google-t5/t5-small)" in card.text
    assert 'AutoModelForSeq2SeqLM.from_pretrained("google-t5/t5-small")' in card.text
    here = {**results, "weights": "pretrained-here", "pretraining": {"what": "a T5 pretrained by `t5peft pretrain`"}}
    card = parse_card(model_card_text(here, False, "someone/x"))
    assert card.data.base_model is None and "**Base weights: pretrained here.**" in card.text
    assert "pretrained-here" in card.data.tags
    own_format = {**results, "method": "adapter", "method_options": {}}
    assert "Hugging Face PEFT cannot load it" in model_card_text(own_format, False)


def test_cli_push_missing_token_is_one_line_exit_2(lora_run, tmp_path, monkeypatch, capsys):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert huggingface_hub.get_token() is None
    assert main(["push", str(lora_run), "someone/tiny-lora"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0] and "HF_TOKEN" in err[0], err


def test_cli_push_refused_upload_is_one_line_exit_2(lora_run, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/someone/tiny-lora"))
    message = "403 Forbidden: you do not have write access to someone/tiny-lora.\nRequest ID: x"
    refused = HfHubHTTPError(message, response=response)  # as the library raises it; no request is sent
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token: FakeApi(refuse=refused))
    assert main(["push", str(lora_run), "someone/tiny-lora"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not upload to someone/tiny-lora" in err[0] and "403 Forbidden" in err[0], err
    assert main(["push", str(lora_run), "not a repo id"]) == 2
    assert "is not a Hub repository id" in capsys.readouterr().err


def test_push_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(HubUploadError, match="not a finished run folder"):
        push_run(tmp_path, "someone/x", api=FakeApi())


def test_train_push_to_hub_uploads_at_the_end_and_writes_no_token(imdb_dir, t5_small_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    apis: list[FakeApi] = []

    def factory(token: str) -> FakeApi:
        assert token == TOKEN
        apis.append(FakeApi())
        return apis[-1]

    monkeypatch.setattr(huggingface_hub, "HfApi", factory)
    out = tmp_path / "run"
    args = tiny_train_args(imdb_dir, t5_small_dir, out, method="ia3", **SIZES)
    assert main([*args, "--push-to-hub", "someone/tiny-ia3"]) == 0
    (api,) = apis
    assert sorted(api.received) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert holds_whole_model(out / "final") is False
    assert json.loads((out / "run_config.json").read_text())["push_to_hub"] == "someone/tiny-ia3"
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_train_push_to_hub_without_a_token_fails_before_training(imdb_dir, t5_small_dir, tmp_path, monkeypatch, capsys):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    out = tmp_path / "run"
    args = tiny_train_args(imdb_dir, t5_small_dir, out, method="ia3", **SIZES)
    assert main([*args, "--push-to-hub", "someone/tiny-ia3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0], err
    assert not out.exists()  # nothing trained, nothing written
    assert main([*args, "--push-to-hub", "no-owner"]) == 2
    assert "'no-owner' is not a Hub repository id" in capsys.readouterr().err
