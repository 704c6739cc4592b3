"""Reference models built with ``transformers`` and ``peft`` (test-only dependencies); the t5peft side: helpers.py."""

from __future__ import annotations

import torch

transformers = __import__("pytest").importorskip("transformers")


def hf_config(**overrides) -> transformers.T5Config:
    """A transformers T5Config; tiny unless overridden. decoder_start_token_id is not a v5 default."""
    values = dict(
        vocab_size=32128,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        dropout_rate=0.1,
    )
    values.update(overrides)
    return transformers.T5Config(**values)


def hf_model(seed: int = 0, **overrides) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(hf_config(**overrides)).eval()


def save_hf_base(directory, seed: int = 0, **overrides):
    """A tiny random transformers T5 (its own initialisation, drawn from ``seed``) saved as a checkpoint folder."""
    hf_model(seed, **overrides).save_pretrained(directory)
    return directory


def _peft():
    return __import__("pytest").importorskip("peft")


def hf_from(base_dir) -> transformers.T5ForConditionalGeneration:
    return transformers.T5ForConditionalGeneration.from_pretrained(base_dir)


def peft_model(base_dir, config):
    """A PEFT model of ``config`` (a PEFT config) on the transformers T5 read from the checkpoint ``base_dir``."""
    return _peft().get_peft_model(hf_from(base_dir), config)


def peft_load(base_dir, adapter_dir):
    """What PEFT makes of the adapter folder ``adapter_dir`` on the checkpoint ``base_dir`` (eval mode)."""
    return _peft().PeftModel.from_pretrained(hf_from(base_dir), str(adapter_dir)).eval()
