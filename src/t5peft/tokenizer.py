"""The T5 tokenizer on the ``tokenizers`` library (no ``transformers`` at run time).

Reads ``tokenizer.json``; where only ``spiece.model`` exists, builds the same fast tokenizer from it
(Unigram model, precompiled NFKC normaliser, whitespace + metaspace pre-tokenisation, ``</s>`` appended,
100 ``<extra_id_N>`` sentinels). Building from ``spiece.model`` needs the ``sentencepiece`` and
``protobuf`` packages to parse the model file; reading ``tokenizer.json`` needs neither.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .errors import T5PeftError
from .hub import Downloader, HubUnavailableError, download_snapshot, looks_like_hub_id

TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json")
NUM_EXTRA_IDS = 100
TRUNCATION_SIDES = ("right", "left", "both")


class TokenizerError(T5PeftError, ValueError):
    pass


class T5Tokenizer:
    """Encodes texts to ids with ``</s>`` appended; truncation keeps the ``</s>`` as T5TokenizerFast does."""

    def __init__(self, tokenizer: Tokenizer, source: str = "") -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.source = source
        self.pad_token_id = self._required_id("<pad>")
        self.eos_token_id = self._required_id("</s>")
        self.unk_token_id = self._required_id("<unk>")

    def _required_id(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: the tokenizer has no {token} token")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(
        self, texts: str | Sequence[str], max_length: int | None = None, truncation_side: str = "right"
    ) -> list[list[int]]:
        """Token ids of each text, ``</s>`` last.

        With ``max_length`` a longer sequence is cut to ``max_length`` ids, the last being ``</s>``:
        ``right`` keeps the head of the text, ``left`` the tail, ``both`` half of each.
        """
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        if max_length is not None:
            ids = [truncate(seq, max_length, truncation_side) for seq in ids]
        return ids

    def pad(
        self, sequences: Sequence[Sequence[int]], pad_value: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest sequence: ``(ids [B, L], attention_mask [B, L])``."""
        pad_value = self.pad_token_id if pad_value is None else pad_value
        return pad_batch(sequences, pad_value)

    def __call__(
        self, texts: str | Sequence[str], max_length: int | None = None, truncation_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        ids, mask = self.pad(self.encode(texts, max_length, truncation_side))
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def truncate(ids: Sequence[int], max_length: int, side: str = "right") -> list[int]:
    """Cut ``ids`` (ending with ``</s>``) to ``max_length``, keeping the final ``</s>``."""
    if side not in TRUNCATION_SIDES:
        raise ValueError(f"truncation side must be one of {TRUNCATION_SIDES}, got {side!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one token and </s>), got {max_length}")
    if len(ids) <= max_length:
        return list(ids)
    body, eos = list(ids[:-1]), ids[-1]
    keep = max_length - 1
    if side == "right":
        body = body[:keep]
    elif side == "left":
        body = body[-keep:]
    else:
        head = (keep + 1) // 2
        body = body[:head] + body[len(body) - (keep - head) :]
    return [*body, eos]


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------
# Loading


def tokenizer_from_spiece(path: Path) -> Tokenizer:
    """Build T5's fast tokenizer from a SentencePiece ``spiece.model`` (what transformers' converter does)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise TokenizerError(
            f"{path}: building the tokenizer from spiece.model needs `pip install sentencepiece protobuf` "
            "(or provide tokenizer.json)"
        ) from err
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf's DecodeError is not importable in a stable place
        raise TokenizerError(f"{path}: not a SentencePiece model ({err})") from None
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = [p.piece for p in proto.pieces if p.type in (2, 3)]  # UNKNOWN and CONTROL pieces
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(NUM_EXTRA_IDS))]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + sentinels])
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return tokenizer


def _resolve_dir(name_or_path: str | os.PathLike, downloader: Downloader | None) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    if not looks_like_hub_id(name_or_path):
        raise TokenizerError(f"{path}: no such folder, and not a Hugging Face Hub model id")
    return download_snapshot(
        str(name_or_path),
        TOKENIZER_FILES,
        what_instead="a local folder holding tokenizer.json (or spiece.model)",
        downloader=downloader,
    )


def load_tokenizer(name_or_path: str | os.PathLike, *, downloader: Downloader | None = None) -> T5Tokenizer:
    """Load from a folder (or file) holding ``tokenizer.json`` or ``spiece.model``, or from a Hub id."""
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".json":
        return T5Tokenizer(_read_tokenizer_json(path), str(path))
    if path.is_file() and path.suffix == ".model":
        return T5Tokenizer(tokenizer_from_spiece(path), str(path))
    directory = _resolve_dir(name_or_path, downloader)
    if (directory / "tokenizer.json").is_file():
        return T5Tokenizer(_read_tokenizer_json(directory / "tokenizer.json"), str(directory))
    if (directory / "spiece.model").is_file():
        return T5Tokenizer(tokenizer_from_spiece(directory / "spiece.model"), str(directory))
    raise TokenizerError(f"{directory}: neither tokenizer.json nor spiece.model found")


def load_run_tokenizer(tokenizer: str | None, model: str, *, downloader: Downloader | None = None) -> T5Tokenizer:
    """A run's tokenizer: ``tokenizer`` if given, else the model's own (a config-only model folder has none)."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer, downloader=downloader)
    try:
        return load_tokenizer(model, downloader=downloader)
    except TokenizerError as err:
        hint = "the model has no tokenizer of its own: pass --tokenizer (tokenizer = ... in an experiment file)"
        raise TokenizerError(f"{err}; {hint}") from None
    except HubUnavailableError as err:  # the tokenizer of --model, a Hub id: say which option gives it
        raise HubUnavailableError(f"the tokenizer of --model {model}: {err} (with --tokenizer)") from None


def copy_tokenizer_files(tokenizer: T5Tokenizer, directory: Path) -> list[str]:
    """Copy the files ``tokenizer`` was read from into ``directory`` (beside a model or an adapter, as Hugging Face
    users expect: the folder then carries its own tokenizer); the names copied."""
    source = Path(tokenizer.source)
    if source.is_file():  # read from one file: that file alone (its folder may hold another tokenizer's files)
        shutil.copyfile(source, directory / source.name)
        return [source.name]
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, directory / name)
    return copied


def _read_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exception subclasses
        raise TokenizerError(f"{path}: not a readable tokenizer.json ({err})") from None
