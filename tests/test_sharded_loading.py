"""``load_pretrained`` of a sharded checkpoint (``model.safetensors.index.json`` + shards) streams shard by shard: the
same model as the single file, each shard checked against the index, and host memory about one shard above the
loaded model (measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memory_probe import MIB, measure_peak
from t5peft import T5Config, T5ForConditionalGeneration, load_pretrained
from t5peft.model.checkpoint import CheckpointError

# 8.4 M parameters (34 MiB in float32) in shards of at most 5 MiB: seven or more
PROBE_T5 = dict(vocab_size=4096, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8)
SHARD_BYTES = 5 * MIB


@pytest.fixture(scope="module")
def sharded_tiny(tiny_base_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded-tiny")
    load_pretrained(tiny_base_dir).save_pretrained(folder, max_shard_bytes=300_000)
    return folder


def test_sharded_loads_the_same_weights(tiny_base_dir, sharded_tiny):
    shards = sorted(sharded_tiny.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    whole, streamed = load_pretrained(tiny_base_dir), load_pretrained(sharded_tiny)
    assert streamed.lm_head.weight is streamed.shared.weight
    for (name, a), (_, b) in zip(whole.named_parameters(), streamed.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    as_bf16 = load_pretrained(sharded_tiny, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in as_bf16.parameters())


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    for path in folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_tensor_listed_but_absent_from_its_shard_is_named(sharded_tiny, tmp_path):
    folder = _copy(sharded_tiny, tmp_path)
    shard = sorted(folder.glob("model-*-of-*.safetensors"))[1]
    state = load_file(shard)
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, shard)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor {dropped} listed in the index is not in"):
        load_pretrained(folder)


def test_a_tensor_the_index_does_not_list_is_refused(sharded_tiny, tmp_path):
    folder = _copy(sharded_tiny, tmp_path)
    shard = sorted(folder.glob("model-*-of-*.safetensors"))[0]
    save_file({**load_file(shard), "stray.weight": torch.zeros(2)}, shard)
    with pytest.raises(CheckpointError, match="stray.weight is in the shard but the index does not list it"):
        load_pretrained(folder)


def test_names_are_checked_before_any_shard_is_read(sharded_tiny, tmp_path):
    folder = _copy(sharded_tiny, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["encoder.block.7.layer.0.layer_norm.weight"] = next(iter(index["weight_map"].values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for shard in folder.glob("model-*-of-*.safetensors"):
        shard.write_bytes(b"not read")  # reading any shard would fail differently
    with pytest.raises(CheckpointError, match="unexpected tensors: encoder.block.7.layer.0.layer_norm.weight"):
        load_pretrained(folder)


def test_streamed_load_peaks_about_one_shard_above_the_model(tmp_path):
    """Loaded as bfloat16 from float32 shards: the whole checkpoint read first would hold 34 MiB of float32 beside the
    17 MiB model; streamed, one 5 MiB shard (its mapped file and its tensors) is held beside the model."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**PROBE_T5))
    model.save_pretrained(tmp_path, max_shard_bytes=SHARD_BYTES)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    largest = max(path.stat().st_size for path in shards)
    fp32_bytes = sum(path.stat().st_size for path in shards)
    bf16_bytes = model.num_parameters() * 2
    assert len(shards) >= 7
    load = f"model = load_pretrained({str(tmp_path)!r}, dtype=torch.bfloat16)\n"
    # the first load imports and initialises what loading uses (77 MiB, once per process): measure a second one
    warm_up = f"import torch\nfrom t5peft import load_pretrained\n{load}del model\n"
    growth = measure_peak(warm_up, load)["growth_bytes"]
    # measured on the 2-core dev machine (2026-12-03): 19.2 MiB = the 16.0 MiB model + 3.2 MiB (0.7 of the largest
    # shard, 4.75 MiB); the whole checkpoint read first, then converted: 48.3 MiB
    assert bf16_bytes < growth <= bf16_bytes + 2.5 * largest, (growth / MIB, bf16_bytes / MIB, largest / MIB)
    assert growth < 0.6 * (fp32_bytes + bf16_bytes)
