"""Find, download, read, check and write T5 checkpoints in Hugging Face's file formats.

File-level code only: it never builds a model (``t5.py`` does, through :func:`read_checkpoint` and
:func:`write_checkpoint`), so the dependency runs one way, ``t5 -> checkpoint``.

Supported weight files, in order of preference: ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``), ``pytorch_model.bin`` and sharded ``.bin``. ``.bin`` files are read
with ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and containers.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import T5PeftError
from ..hub import Downloader, download_snapshot, looks_like_hub_id
from .config import T5Config

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)

# Keys Hugging Face writes that alias ``shared.weight`` or carry nothing the model uses.
EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class CheckpointError(T5PeftError, ValueError):
    """A checkpoint that cannot be loaded: the message names the file and the tensor."""


# --------------------------------------------------------------------------------------------------
# Locating files


def resolve_model_dir(name_or_path: str | os.PathLike, downloader: Downloader | None = None) -> Path:
    """A local folder as it is, or a Hub id downloaded (config + weights only) into the Hub cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a folder holding config.json and model weights")
    if not looks_like_hub_id(name_or_path):
        raise CheckpointError(f"{path}: no such folder, and not a Hugging Face Hub model id")
    instead = "a local folder holding config.json and model.safetensors (or pytorch_model.bin)"
    common = ["config.json", "pretraining.json"]  # the record of `t5peft pretrain`, where the weights come from it
    folder = download_snapshot(
        str(name_or_path),
        [*common, SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors"],
        what_instead=instead,
        downloader=downloader,
    )
    if not any((folder / f).exists() for f in WEIGHT_FILES):
        folder = download_snapshot(
            str(name_or_path),
            [*common, PYTORCH_BIN, PYTORCH_BIN_INDEX, "pytorch_model-*.bin"],
            what_instead=instead,
            downloader=downloader,
        )
    return folder


def find_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


# --------------------------------------------------------------------------------------------------
# Reading tensors


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors, which could run "
            f"code ({first_line}). Convert trusted checkpoints to safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return state


def _read_sharded(index_path: Path, reader) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path}: not a valid shard index ({err})") from None
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} listed in the index is missing")
        shard_state = reader(shard_path)
        for key in weight_map:
            if weight_map[key] == shard and key not in shard_state:
                raise CheckpointError(f"{shard_path}: tensor {key} listed in the index is not in the shard")
        state.update(shard_state)
    return state


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read every tensor of a weight file (or of all shards of an index)."""
    name = path.name
    if name.endswith(".safetensors.index.json"):
        return _read_sharded(path, _read_safetensors)
    if name.endswith(".bin.index.json"):
        return _read_sharded(path, _read_bin)
    if name.endswith(".safetensors"):
        return _read_safetensors(path)
    return _read_bin(path)


# --------------------------------------------------------------------------------------------------
# Checking and loading


def normalize_state_dict(state: dict[str, Tensor], config: T5Config, source: str) -> dict[str, Tensor]:
    """Resolve Hugging Face's aliases of the embedding to the model's own keys, drop unused ones.

    Returns a state dict whose keys are exactly the model's parameters (``lm_head.weight`` only when
    untied). A checkpoint whose ``lm_head.weight`` differs from ``shared.weight`` although the config
    says they are tied is loaded untied, as ``transformers`` does, with a warning.
    """
    state = dict(state)
    for key in IGNORED_KEYS:
        state.pop(key, None)
    aliases = [state.pop(k) for k in EMBEDDING_ALIASES if k in state]
    if "shared.weight" not in state and aliases:
        state["shared.weight"] = aliases[0]
    if config.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        shared = state.get("shared.weight")
        if head is not None and shared is not None and not torch.equal(head, shared):
            log.warning(
                "%s: config says tie_word_embeddings=true but lm_head.weight differs from shared.weight; "
                "loading them untied",
                source,
            )
            config.tie_word_embeddings = False
            state["lm_head.weight"] = head
        elif "shared.weight" not in state and head is not None:
            state["shared.weight"] = head
    return state


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Every parameter present with its shape, nothing unexpected; errors name each tensor."""
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if wrong_shape:
        problems.append(f"mismatched shapes: {'; '.join(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: non floating-point tensors: {', '.join(not_float)}")


def read_checkpoint(
    name_or_path: str | os.PathLike, downloader: Downloader | None = None
) -> tuple[T5Config, dict[str, Tensor], str]:
    """The config and the normalised weights of a checkpoint folder or Hub id, and the weight file's path."""
    config, weights = _config_and_weights(name_or_path, downloader)
    return config, normalize_state_dict(read_state_dict(weights), config, str(weights)), str(weights)


def _config_and_weights(name_or_path: str | os.PathLike, downloader: Downloader | None) -> tuple[T5Config, Path]:
    directory = resolve_model_dir(name_or_path, downloader)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: config.json not found")
    config = T5Config.from_json_file(config_path)
    config.name_or_path = str(name_or_path)
    return config, find_weight_file(directory)


@dataclass
class CheckpointStream:
    """A checkpoint read one weight file at a time: ``names`` (the model's keys it provides) are known before any
    tensor is read, :meth:`parts` yields ``(file, its tensors under the model's keys)``, one file in memory at once.

    A single weight file is one part; a sharded one (``*.index.json``) one part per shard, in the index's order, each
    shard checked against the index (every tensor it lists there, nothing else) as it is read."""

    source: str
    names: set[str]
    _files: list[Path]
    _reader: Callable[[Path], dict[str, Tensor]]
    _rename: dict[str, str]  # checkpoint key -> model key, for the keys that are loaded
    _listed: dict[str, set[str]]  # shard file name -> the keys the index puts there (empty: a single file)

    def parts(self) -> Iterator[tuple[str, dict[str, Tensor]]]:
        for path in self._files:
            state = self._reader(path)
            listed = self._listed.get(path.name)
            if listed is not None:
                absent = sorted(listed - set(state))
                if absent:
                    raise CheckpointError(f"{path}: tensor {absent[0]} listed in the index is not in the shard")
                extra = sorted(set(state) - listed)
                if extra:
                    raise CheckpointError(f"{path}: tensor {extra[0]} is in the shard but the index does not list it")
            part = {self._rename[key]: tensor for key, tensor in state.items() if key in self._rename}
            del state
            yield str(path), part


def stream_checkpoint(
    name_or_path: str | os.PathLike, downloader: Downloader | None = None
) -> tuple[T5Config, CheckpointStream]:
    """The config of a checkpoint and its weights as a :class:`CheckpointStream`; a single weight file is read whole
    (and normalised as :func:`read_checkpoint` does), a sharded one shard by shard."""
    config, weights = _config_and_weights(name_or_path, downloader)
    if not weights.name.endswith(".index.json"):
        state = normalize_state_dict(read_state_dict(weights), config, str(weights))
        return config, CheckpointStream(
            str(weights), set(state), [weights], lambda _: state, {key: key for key in state}, {}
        )
    reader = _read_safetensors if weights.name.endswith(".safetensors.index.json") else _read_bin
    weight_map = _weight_map(weights)
    rename = _rename_plan(set(weight_map), config, weights, weight_map, reader)
    files = [weights.parent / shard for shard in sorted(set(weight_map.values()))]
    listed: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        listed.setdefault(shard, set()).add(key)
    return config, CheckpointStream(str(weights), set(rename.values()), files, reader, rename, listed)


def _weight_map(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path}: not a valid shard index ({err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: weight_map must map tensor names to shard file names")
    for shard in sorted(set(weight_map.values())):
        if not (index_path.parent / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard} listed in the index is missing")
    return weight_map


def _rename_plan(
    keys: set[str],
    config: T5Config,
    index_path: Path,
    weight_map: dict[str, str],
    reader: Callable[[Path], dict[str, Tensor]],
) -> dict[str, str]:
    """Checkpoint key -> model key, as :func:`normalize_state_dict` maps a whole state dict, from the names alone.

    Only where the config ties the head to the embedding and the checkpoint holds both are two tensors read
    beforehand, to see whether they are equal (if not, the checkpoint is loaded untied, with the same warning)."""
    rename = {key: key for key in keys if key not in IGNORED_KEYS and key not in EMBEDDING_ALIASES}
    if "shared.weight" not in rename:
        alias = next((k for k in EMBEDDING_ALIASES if k in keys), None)
        if alias is not None:
            rename[alias] = "shared.weight"
    if config.tie_word_embeddings and "lm_head.weight" in rename:
        embedding = next((k for k, v in rename.items() if v == "shared.weight"), None)
        if embedding is None:
            rename["lm_head.weight"] = "shared.weight"
        else:
            head = reader(index_path.parent / weight_map["lm_head.weight"])["lm_head.weight"]
            shared = reader(index_path.parent / weight_map[embedding])[embedding]
            if torch.equal(head, shared):
                del rename["lm_head.weight"]
            else:
                log.warning(
                    "%s: config says tie_word_embeddings=true but lm_head.weight differs from shared.weight; "
                    "loading them untied",
                    index_path,
                )
                config.tie_word_embeddings = False
    return rename


def check_names(model: nn.Module, names: set[str], source: str) -> None:
    """Every parameter of ``model`` among ``names`` and nothing else (before any tensor is read)."""
    expected = {name for name, _ in model.named_parameters()}
    problems = []
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))


def check_part(model: nn.Module, part: dict[str, Tensor], source: str) -> None:
    """The shapes and dtypes of one part of a checkpoint (its names were checked by :func:`check_names`)."""
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)}, model {expected[k]}"
        for k, v in part.items()
        if tuple(v.shape) != expected[k]
    ]
    if wrong:
        raise CheckpointError(f"{source}: mismatched shapes: {'; '.join(wrong)}")
    not_float = [k for k, v in part.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: non floating-point tensors: {', '.join(not_float)}")


# --------------------------------------------------------------------------------------------------
# Writing


def write_checkpoint(
    config: T5Config,
    state: dict[str, Tensor],
    directory: str | os.PathLike,
    *,
    max_shard_bytes: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json`` + the weights (tensors copied to the CPU) for ``transformers`` and us.

    One ``model.safetensors``, or with ``max_shard_bytes`` shards ``model-0000i-of-0000n.safetensors`` of at
    most that many bytes each (tensor data plus the file's header) and their ``model.safetensors.index.json``,
    as ``transformers`` writes them; a tensor larger than a shard on its own is an error. ``dtype`` converts
    floating-point tensors (e.g. ``torch.bfloat16`` halves the files). Weight files a previous write left in
    ``directory`` are removed first, so the folder never holds two sets of weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory)
    tensors = {name: _for_file(tensor, dtype) for name, tensor in state.items()}
    _remove_weight_files(directory)
    if max_shard_bytes is None:
        save_file(tensors, directory / SAFETENSORS, metadata={"format": "pt"})
        return directory
    shards = plan_shards(tensors, max_shard_bytes)
    weight_map: dict[str, str] = {}
    for number, names in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: tensors[name] for name in names}, directory / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return directory


def _for_file(tensor: Tensor, dtype: torch.dtype | None) -> Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def _remove_weight_files(directory: Path) -> None:
    for pattern in (SAFETENSORS, SAFETENSORS_INDEX, "model-*-of-*.safetensors", PYTORCH_BIN, PYTORCH_BIN_INDEX):
        for path in directory.glob(pattern):
            path.unlink()


# A safetensors header holds, per tensor, its name, dtype, shape and offsets as JSON: this bounds it generously.
_HEADER_BYTES_PER_TENSOR = 256
_HEADER_BYTES = 1024


def plan_shards(tensors: dict[str, Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order, each shard's file at most ``max_shard_bytes`` (header included)."""
    shards: list[list[str]] = [[]]
    used = _HEADER_BYTES
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size() + _HEADER_BYTES_PER_TENSOR + len(name)
        if size + _HEADER_BYTES > max_shard_bytes:
            raise CheckpointError(
                f"tensor {name} {tuple(tensor.shape)} takes {size / 2**20:.2f} MiB as {tensor.dtype}, more than a "
                f"shard of {max_shard_bytes / 2**20:.2f} MiB can hold (a tensor is never split across files): "
                "allow larger shards, or write bfloat16"
            )
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = _HEADER_BYTES
        shards[-1].append(name)
        used += size
    return shards
