"""Bad checkpoints and configs give clear errors that name the file and the tensor or field."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t5peft import CheckpointError, ConfigError, T5Config, T5ForConditionalGeneration, load_pretrained
from t5peft.hub import HubUnavailableError, looks_like_hub_id

CONFIG = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(**CONFIG)).save_pretrained(tmp_path / "ok")
    return tmp_path / "ok"


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_round_trip(saved):
    model = load_pretrained(saved)
    assert model.num_parameters() == T5ForConditionalGeneration(T5Config(**CONFIG)).num_parameters()


def test_missing_tensor_is_named(saved):
    _edit_weights(saved, lambda s: s.pop("decoder.block.1.layer.2.DenseReluDense.wo.weight"))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*missing tensors: decoder.block.1.layer.2"):
        load_pretrained(saved)


def test_wrong_shape_is_named(saved):
    def widen(state):
        state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(16, 17)

    _edit_weights(saved, widen)
    with pytest.raises(CheckpointError, match=r"encoder.block.0.layer.0.SelfAttention.q.weight: checkpoint \(16, 17\)"):
        load_pretrained(saved)


def test_unexpected_tensor_is_named(saved):
    _edit_weights(saved, lambda s: s.update({"encoder.block.9.layer.0.layer_norm.weight": torch.ones(16)}))
    with pytest.raises(CheckpointError, match="unexpected tensors: encoder.block.9.layer.0.layer_norm.weight"):
        load_pretrained(saved)


def test_shape_disagreeing_with_config(saved):
    config = json.loads((saved / "config.json").read_text())
    config["d_ff"] = 48
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"DenseReluDense.wi.weight: checkpoint \(32, 16\), model \(48, 16\)"):
        load_pretrained(saved)


def test_truncated_safetensors(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(saved)


class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_malicious_bin_is_refused_not_executed(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state = {"shared.weight": torch.zeros(2), "payload": _RunsCode(marker)}
    with open(saved / "pytorch_model.bin", "wb") as handle:
        pickle.dump(state, handle)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to load"):
        load_pretrained(saved)
    assert not marker.exists(), "the pickled payload ran"
    # and torch.save's zip format with an object inside is refused too
    torch.save({"payload": _RunsCode(marker)}, saved / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_pretrained(saved)
    assert not marker.exists()


def test_bin_checkpoint_loads(saved):
    state = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    torch.save(state, saved / "pytorch_model.bin")
    model = load_pretrained(saved)
    assert torch.equal(model.shared.weight, state["shared.weight"])


def test_shard_listed_but_missing(saved):
    state = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    keys = sorted(state)
    save_file({k: state[k] for k in keys[:10]}, saved / "model-00001-of-00002.safetensors")
    weight_map = {
        k: ("model-00001-of-00002.safetensors" if i < 10 else "model-00002-of-00002.safetensors")
        for i, k in enumerate(keys)
    }
    (saved / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors listed in the index is missing"):
        load_pretrained(saved)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("d_model", -8, "d_model must be a positive integer"),
        ("num_heads", "eight", "num_heads must be a positive integer"),
        ("feed_forward_proj", "gated-swishy", "feed_forward_proj must be one of"),
        ("dropout_rate", 1.5, r"dropout_rate must be in \[0, 1\)"),
        ("layer_norm_epsilon", 0, "layer_norm_epsilon must be > 0"),
        ("model_type", "bert", "model_type is 'bert'"),
    ],
)
def test_invalid_config_values(saved, key, value, message):
    config = json.loads((saved / "config.json").read_text())
    config[key] = value
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"config.json: {message}"):
        load_pretrained(saved)


def test_config_not_json_and_unknown_keys(saved):
    config = json.loads((saved / "config.json").read_text())
    config["task_specific_params"] = {"summarization": {}}  # unknown keys are ignored
    (saved / "config.json").write_text(json.dumps(config))
    load_pretrained(saved)
    (saved / "config.json").write_text('{\n  "d_model": 16,\n  oops\n}')
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        load_pretrained(saved)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        load_pretrained(tmp_path / "nope" / "x")
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_pretrained(tmp_path)
    T5Config(**CONFIG).save(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(tmp_path)


def test_hub_id_downloads_with_injected_downloader(saved):
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(saved)

    model = load_pretrained("google-t5/t5-small", downloader=fake_download)
    assert model.config.d_model == 16
    assert calls[0]["repo_id"] == "google-t5/t5-small"
    assert "model.safetensors" in calls[0]["allow_patterns"]
    assert "pretraining.json" in calls[0]["allow_patterns"]  # a backbone pretrained here keeps its label


def test_hub_offline_fails_fast_with_advice():
    def offline(**kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    with pytest.raises(HubUnavailableError, match="pass a local folder holding config.json and model.safetensors"):
        load_pretrained("t5-small", downloader=offline)


def test_real_hub_client_in_offline_mode(monkeypatch, tmp_path):
    """The real huggingface_hub code path, told to stay offline, fails with our advice (no network used)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        with pytest.raises(HubUnavailableError, match="t5-small"):
            load_pretrained("google-t5/t5-small")
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_hub_id_detection(tmp_path):
    assert looks_like_hub_id("t5-small") and looks_like_hub_id("google/flan-t5-base")
    assert not looks_like_hub_id(str(tmp_path))
    assert not looks_like_hub_id("some/dir/deeper")
