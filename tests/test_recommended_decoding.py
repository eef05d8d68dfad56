"""A model folder's recommended decoding (config.json `generation`): validated, used when no settings are given,
and overridden by explicit choices."""

from __future__ import annotations

import copy

import pytest

from biomedgpt.config import BioMedGPTConfig, resolve_generation
from biomedgpt.inference import GenerationSettings, Message, generate_batch, recommended_decoding


def test_explicit_choices_override_the_recommendation_which_overrides_the_fallback():
    fallback = {"max_new_tokens": 128, "repetition_penalty": 1.1}
    recommended = {"num_beams": 4, "repetition_penalty": 1.0, "quantize": "bf16"}
    assert resolve_generation(fallback, recommended, {"num_beams": None, "quantize": None}) == {
        "max_new_tokens": 128, "repetition_penalty": 1.0, "num_beams": 4, "quantize": "bf16"}
    assert resolve_generation(fallback, recommended, {"num_beams": 1, "max_new_tokens": 8})["num_beams"] == 1
    # sampling asked for explicitly: the recommended beam search (greedy by definition) is dropped
    sampled = resolve_generation(fallback, recommended, {"temperature": 0.7})
    assert "num_beams" not in sampled and GenerationSettings(**sampled).temperature == 0.7


def test_unknown_generation_keys_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown generation settings \['beams'\].*num_beams"):
        BioMedGPTConfig.from_dict({"generation": {"beams": 4}})


def test_no_settings_means_the_models_recommendation(tiny_model):
    model = copy.copy(tiny_model)  # shares the weights; its own config
    model.config = copy.deepcopy(tiny_model.config)
    model.config.generation = {"num_beams": 3, "max_new_tokens": 6, "repetition_penalty": 1.0}
    conversations = [[Message("user", "Describe it.", ["CCO"])], [Message("user", "Hello?")]]
    assert GenerationSettings.for_model(model).num_beams == 3
    assert GenerationSettings.for_model(model, num_beams=1).num_beams == 1
    recommended = generate_batch(model, conversations)
    assert recommended == generate_batch(model, conversations, GenerationSettings(**model.config.generation))
    assert recommended != generate_batch(model, conversations, GenerationSettings(max_new_tokens=2))


def test_the_weight_format_is_a_cpu_setting(tiny_model):
    model = copy.copy(tiny_model)
    model.config = copy.deepcopy(tiny_model.config)
    model.config.generation = {"num_beams": 2, "quantize": "bf16"}
    assert recommended_decoding(model) == {"num_beams": 2, "quantize": "bf16"}  # on the CPU: the fast loop's
