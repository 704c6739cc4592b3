"""The T5 family by name (``t5peft.model.family``): every member's parameter count on the meta device equals the
published one; the names work where a config folder did; an unknown name is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from t5peft import T5ForConditionalGeneration
from t5peft.engine.runtime import architecture, build_model
from t5peft.model.family import FAMILY, PUBLISHED_PARAMETERS, family_config
from t5peft.train.settings import TrainError


def test_every_member_has_a_published_count():
    assert set(FAMILY) == set(PUBLISHED_PARAMETERS)
    assert len(FAMILY) == 15


@pytest.mark.parametrize("name", list(FAMILY))
def test_parameter_count_on_meta_equals_the_published_one(name):
    with torch.device("meta"):
        model = T5ForConditionalGeneration(family_config(name))
    assert model.num_parameters() == PUBLISHED_PARAMETERS[name]
    assert model.shared.weight.is_meta


def test_t5_small_matches_the_shared_config(t5_small_dir):
    shipped = json.loads((t5_small_dir / "config.json").read_text())
    ours = family_config("t5-small").to_dict()
    for key in ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "vocab_size", "feed_forward_proj"):
        assert ours[key] == shipped[key], key


def test_names_resolve_without_download_and_aliases_work():
    assert architecture("t5-large", TrainError).d_model == 1024
    assert architecture("google-t5/t5-3b", TrainError).d_kv == 128
    assert architecture("google/flan-t5-xl", TrainError).is_gated_act


def test_random_init_by_name_builds_the_architecture():
    model = build_model("google/t5-v1_1-small", "random", 0, TrainError)
    assert model.num_parameters() == PUBLISHED_PARAMETERS["google/t5-v1_1-small"]
    assert model.config.name_or_path == "random-init:google/t5-v1_1-small"


def test_unknown_model_name_is_a_one_line_error():
    with pytest.raises(TrainError) as caught:
        build_model("t5-huge", "random", 0, TrainError)
    message = str(caught.value)
    assert "\n" not in message and "t5-huge" in message and "google/flan-t5-xxl" in message
