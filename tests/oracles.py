"""Helpers that build reference models with ``transformers`` (a test-only dependency)."""

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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def random_batch(seed: int = 0, vocab: int = 32000) -> dict[str, torch.Tensor]:
    """Three rows of random ids (two of them padded) and random labels, for the method tests."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    labels = torch.randint(2, vocab, (3, 5), generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
