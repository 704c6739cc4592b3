"""Our T5 against transformers' T5 on the same weights: logits, loss, generation, both load directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import relative_error
from oracles import hf_config, hf_model, transformers
from t5peft import T5Config, T5ForConditionalGeneration, load_pretrained

TOLERANCE = 1e-5

# variant -> transformers config overrides; "t5-small" uses the real t5-small config.json from ../shared
VARIANTS = {
    "t5-small": None,
    "v1.0-small": dict(num_decoder_layers=3),
    "v1.1-gated-untied": dict(feed_forward_proj="gated-gelu"),
}
FORMATS = ("safetensors", "sharded-safetensors", "pytorch-bin")


def _reference(variant: str, t5_small_dir: Path, tmp: Path) -> transformers.T5ForConditionalGeneration:
    """A random transformers model; the v1.1 one is loaded from a Hub-style untied checkpoint."""
    if variant == "t5-small":
        config = transformers.T5Config.from_pretrained(t5_small_dir)
        torch.manual_seed(1)
        return transformers.T5ForConditionalGeneration(config).eval()
    model = hf_model(seed=2, **VARIANTS[variant])
    if variant != "v1.1-gated-untied":
        return model
    # Published v1.1/flan-t5 checkpoints: tie_word_embeddings false and their own lm_head.weight.
    hub_dir = tmp / "hub-style"
    hub_dir.mkdir()
    state = {k: v.clone() for k, v in model.state_dict().items() if "embed_tokens" not in k}
    state["lm_head.weight"] = torch.randn_like(state["shared.weight"])
    save_file(state, hub_dir / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.update(tie_word_embeddings=False)
    config.pop("scale_decoder_outputs", None)
    (hub_dir / "config.json").write_text(json.dumps(config))
    reference = transformers.T5ForConditionalGeneration.from_pretrained(hub_dir).eval()
    assert not torch.equal(reference.lm_head.weight, reference.shared.weight)
    assert reference.config.scale_decoder_outputs is False
    return reference


def _save(reference, fmt: str, directory: Path) -> None:
    if fmt == "safetensors":
        reference.save_pretrained(directory)
    elif fmt == "sharded-safetensors":
        reference.save_pretrained(directory, max_shard_size="2MB")
        assert (directory / "model.safetensors.index.json").is_file()
    else:  # the legacy layout: every key of state_dict(), tied aliases included
        directory.mkdir(parents=True)
        reference.config.to_json_file(directory / "config.json")
        torch.save(reference.state_dict(), directory / "pytorch_model.bin")


@pytest.fixture(scope="module")
def review_batch(tokenizer, imdb_test_texts):
    """Real reviews: five long ones truncated to 128 and three short ones, so rows carry padding."""
    by_length = sorted(range(2000), key=lambda i: len(imdb_test_texts[i]))
    picks = by_length[:3] + list(range(5))
    texts = ["Review: " + imdb_test_texts[i] for i in picks]
    batch = tokenizer(texts, max_length=128)
    assert batch["attention_mask"].sum(1).min() < 128, "the batch must contain padding"
    # decoder side: the first 12 tokens of each review as labels, shorter rows padded with -100
    targets = [[*ids[:-1][: 4 + 2 * i], 1] for i, ids in enumerate(tokenizer.encode(texts))]
    labels, label_mask = tokenizer.pad(targets)
    labels = labels.masked_fill(label_mask == 0, -100)
    return batch, labels


@pytest.fixture(scope="module", params=[(v, f) for v in VARIANTS for f in FORMATS], ids=lambda p: f"{p[0]}-{p[1]}")
def checkpoint(request, t5_small_dir, tmp_path_factory):
    variant, fmt = request.param
    tmp = tmp_path_factory.mktemp(f"{variant}-{fmt}")
    reference = _reference(variant, t5_small_dir, tmp)
    _save(reference, fmt, tmp / "checkpoint")
    return reference, tmp / "checkpoint"


def test_logits_and_loss_match_transformers(checkpoint, review_batch, record_property):
    reference, directory = checkpoint
    ours = load_pretrained(directory)
    batch, labels = review_batch
    with torch.no_grad():
        expected = reference(**batch, labels=labels)
        actual = ours(**batch, labels=labels)
    assert actual.logits.shape == expected.logits.shape
    record_property("logits_relative_error", relative_error(actual.logits, expected.logits))
    record_property("loss_relative_error", relative_error(actual.loss, expected.loss))
    assert relative_error(actual.logits, expected.logits) <= TOLERANCE
    assert relative_error(actual.loss, expected.loss) <= TOLERANCE
    assert ours.num_parameters() == reference.num_parameters()


def _stop_token_with_mixed_rows(tokens: torch.Tensor) -> int | None:
    """A generated token that occurs early in some rows and not in others."""
    body = tokens[:, 1:-1]
    for token in body.unique().tolist():
        rows = (body == token).any(dim=1)
        if rows.any() and not rows.all():
            return token
    return None


def test_greedy_generation_matches_transformers(checkpoint, review_batch):
    reference, directory = checkpoint
    # transformers' own cache breaks when decoder and encoder depths differ: compare with its uncached path
    use_cache = reference.config.num_decoder_layers == reference.config.num_layers
    batch, _ = review_batch
    ours = load_pretrained(directory)
    kwargs = dict(do_sample=False, num_beams=1, use_cache=use_cache, max_new_tokens=12)
    assert torch.equal(ours.generate(**batch, max_new_tokens=12), reference.generate(**batch, **kwargs))
    # A random model rarely emits EOS: declare a token that some rows produce the stop token, so early
    # stopping and the padding after it are compared too.
    stop = _stop_token_with_mixed_rows(ours.generate(**batch, max_new_tokens=12))
    if stop is None:
        # the random full-size t5-small repeats one token in every row; the small variants do not
        assert ours.config.d_model == 512, "small variants must exercise early stopping"
        return
    ours.config.eos_token_id = stop
    actual = ours.generate(**batch, max_new_tokens=12)
    expected = reference.generate(**batch, **kwargs, eos_token_id=stop)
    assert (actual[:, 1:] == 0).any(), "some rows must be padded after stopping"
    assert torch.equal(actual, expected)


def test_transformers_loads_what_we_save(checkpoint, review_batch, tmp_path, record_property):
    reference, directory = checkpoint
    ours = load_pretrained(directory)
    ours.save_pretrained(tmp_path / "ours")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    batch, labels = review_batch
    with torch.no_grad():
        expected = reference(**batch, labels=labels).logits
        actual = reloaded(**batch, labels=labels).logits
    record_property("logits_relative_error", relative_error(actual, expected))
    assert relative_error(actual, expected) <= TOLERANCE
    # and our own loader reads it back bit for bit
    again = load_pretrained(tmp_path / "ours")
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_inputs_embeds_equals_input_ids(review_batch):
    model = T5ForConditionalGeneration(T5Config(**_tiny()))
    model.eval()
    batch, labels = review_batch
    with torch.no_grad():
        by_ids = model(**batch, labels=labels).logits
        by_embeds = model(
            inputs_embeds=model.shared(batch["input_ids"]),
            attention_mask=batch["attention_mask"],
            labels=labels,
        ).logits
    assert torch.equal(by_ids, by_embeds)


def test_padding_does_not_change_unpadded_rows(tokenizer, imdb_test_texts):
    """A review padded to a longer batch gives the same logits as alone (mask correctness)."""
    model = T5ForConditionalGeneration(T5Config(**_tiny())).eval()
    texts = ["Review: " + imdb_test_texts[0], "Review: short and sweet."]
    batch = tokenizer(texts, max_length=64)
    alone = tokenizer(texts[1:], max_length=64)
    decoder = torch.tensor([[0, 1465], [0, 1465]])
    with torch.no_grad():
        together = model(**batch, decoder_input_ids=decoder).logits[1]
        single = model(**alone, decoder_input_ids=decoder[:1]).logits[0]
    assert relative_error(together, single) <= TOLERANCE


def test_dropout_is_active_in_training_mode(review_batch):
    model = T5ForConditionalGeneration(T5Config(**_tiny()))
    batch, labels = review_batch
    model.train()
    first, second = model(**batch, labels=labels).loss, model(**batch, labels=labels).loss
    assert first.item() != second.item()
    model.eval()
    assert model(**batch, labels=labels).loss.item() == model(**batch, labels=labels).loss.item()


def test_t5_small_parameter_count(t5_small_dir):
    config = T5Config.from_json_file(t5_small_dir / "config.json")
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    assert model.num_parameters() == 60_506_624


def test_hf_config_fields_round_trip():
    config = hf_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ours = T5Config.from_dict(config.to_dict())
    assert ours.is_gated_act and ours.dense_act_fn == "gelu_new"
    assert ours.scale_decoder_outputs is False


def _tiny() -> dict:
    return dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
