"""The compiled batch-1 decode step (biomedgpt/model/native_step.c) against the PyTorch step it replaces."""

from __future__ import annotations

import shutil

import pytest
import torch
from _decode_models import generic_build, sharp_tiny

from biomedgpt.data.collate import collate
from biomedgpt.inference import Message, build_example
from biomedgpt.model import fast_decode, native
from biomedgpt.model.biomedgpt import BioMedGPT

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the native step is then off and the PyTorch step runs")

CONVERSATION = [Message("user", "What is this molecule used for?", ["CC(=O)Oc1ccccc1C(=O)O"])]


@pytest.fixture(scope="module")
def sharp_model() -> BioMedGPT:
    return sharp_tiny()


def _prompt(model, pad: int = 0):
    batch = collate([build_example(model, CONVERSATION)], model.tokenizer.pad_token_id, "left").model_inputs()
    embeds = model.embed(batch["input_ids"], batch["molecules"], batch["proteins"])
    mask = batch["attention_mask"]
    if pad:  # left padding on a batch of one (what a padded batch row looks like)
        embeds = torch.cat([torch.randn(1, pad, embeds.shape[-1]), embeds], dim=1)
        mask = torch.cat([torch.zeros(1, pad, dtype=mask.dtype), mask], dim=1)
    return embeds, mask


def _decode_both(model, packed: fast_decode.PackedLM, embeds, mask, steps: int = 12):
    """Greedy-feed the PyTorch step's tokens to both steps; returns their logits, [steps, vocab] each."""
    reference = fast_decode._Prefilled(packed, embeds, mask, steps + 1)
    ours = fast_decode._Prefilled(packed, embeds, mask, steps + 1)
    assert ours.use_native(), "the native step should be available here (a C compiler is)"
    assert ours.native is not None and reference.native is None
    token = reference.logits.argmax(-1)
    ref_logits, our_logits = [], []
    for step in range(steps):
        ref_logits.append(reference.step(token, step))
        our_logits.append(ours.step(token, step))
        token = ref_logits[-1].argmax(-1)
    return torch.cat(ref_logits), torch.cat(our_logits)


@pytest.mark.parametrize("pad", [0, 5])
@torch.inference_mode()
def test_native_step_equals_the_pytorch_step_in_float32(sharp_model, pad):
    embeds, mask = _prompt(sharp_model, pad)
    ref, ours = _decode_both(sharp_model, fast_decode.packed_lm(sharp_model.llm, "none"), embeds, mask)
    assert ref.abs().max() > 1.0, "degenerate logits: the comparison would prove nothing"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_native_step_reads_reduced_precision_weights_exactly(mode):
    """On weights that are exactly representable in `mode`, the native step on the packed `mode` weights equals
    the native step on the float32 weights (same float32 KV cache; the float32 step is checked against PyTorch
    above). The PyTorch step of these modes rounds activations to bf16, so it cannot be the reference here."""
    model = sharp_tiny(1, exact_in=mode)
    with torch.inference_mode():
        _compare_weight_modes(model, mode)


def _compare_weight_modes(model, mode):
    embeds, mask = _prompt(model)
    full, packed = fast_decode.packed_lm(model.llm, "none"), fast_decode.packed_lm(model.llm, mode)
    assert packed.layers[0].linears[0].weight.dtype == {"bf16": torch.bfloat16, "int8": torch.int8}[mode]
    first, second = (fast_decode._Prefilled(full, embeds, mask, 13) for _ in range(2))
    lib = native.load()
    reference, ours = native.NativeStep(lib, full, first.cache), native.NativeStep(lib, packed, second.cache)
    cos, sin = full.rope_tables(torch.arange(first.prompt_len + 13)[None], dtype=torch.float32)
    token = int(first.logits.argmax(-1))
    rounded = fast_decode._Prefilled(packed, embeds, mask, 13)  # the mode's own (bf16) KV cache
    assert rounded.cache[0][0].dtype == torch.bfloat16
    for step in range(12):
        position = first.prompt_len + step
        expected = reference(token, position, cos[0, 0, position], sin[0, 0, position])
        got = ours(token, position, cos[0, 0, position], sin[0, 0, position])
        if step == 0:  # layer 0's new key and value do not depend on the cache: written rounded to nearest
            native.NativeStep(lib, packed, rounded.cache)(token, position, cos[0, 0, position], sin[0, 0, position])
            for exact, bf16 in zip(second.cache[0], rounded.cache[0]):
                assert torch.equal(exact[:, :, position].to(torch.bfloat16), bf16[:, :, position])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        token = int(expected.argmax(-1))
    assert expected.abs().max() > 1.0


def test_generate_uses_the_native_step_and_equals_hf(sharp_model, monkeypatch):
    calls = []
    original = native.NativeStep.__call__
    monkeypatch.setattr(native.NativeStep, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    batch = collate([build_example(sharp_model, CONVERSATION)], sharp_model.tokenizer.pad_token_id, "left")
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=20)
    ours = sharp_model.generate(**batch.model_inputs(), engine="fast", **greedy)
    assert len(calls) == 19  # every step after the prefill
    ref = sharp_model.generate(**batch.model_inputs(), engine="hf", **greedy)
    assert len(set(ours[0].tolist())) > 5 and torch.equal(ours, ref)


def test_disabled_or_uncompilable_falls_back_to_pytorch(sharp_model, monkeypatch, tmp_path, caplog):
    batch = collate([build_example(sharp_model, CONVERSATION)], sharp_model.tokenizer.pad_token_id, "left")
    expected = sharp_model.generate(**batch.model_inputs(), engine="fast", do_sample=False, max_new_tokens=8)
    monkeypatch.setenv(native.ENV_DISABLE, "0")
    assert native.load() is None
    monkeypatch.delenv(native.ENV_DISABLE)
    monkeypatch.setenv("BIOMEDGPT_CACHE", str(tmp_path))  # nothing compiled there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native._library.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert native.load() is None
        assert "native decode step unavailable" in caplog.text
        out = sharp_model.generate(**batch.model_inputs(), engine="fast", do_sample=False, max_new_tokens=8)
        assert torch.equal(out, expected)
    finally:
        native._library.cache_clear()


@torch.inference_mode()
def test_native_step_reads_a_bf16_kv_cache_as_its_float32_copy(sharp_model):
    """bf16/int8 modes keep a bf16 KV cache: the step must read it as the float32 values it holds (the only
    difference left is the rounding of each new key/value when it is written)."""
    packed = fast_decode.packed_lm(sharp_model.llm, "bf16")
    embeds, mask = _prompt(sharp_model, pad=3)
    state = fast_decode._Prefilled(packed, embeds, mask, 9)
    assert state.cache[0][0].dtype == torch.bfloat16
    widened = [(k.float(), v.float()) for k, v in state.cache]
    lib = native.load()
    rounded, exact = native.NativeStep(lib, packed, state.cache), native.NativeStep(lib, packed, widened)
    assert state.use_native()
    cos, sin = state.native_rope
    token = int(state.logits.argmax(-1))
    for step in range(8):
        position, index = int(state.next_position[0, 0]) + step, state.prompt_len + step
        args = (token, index, cos[position], sin[position], state.native_valid)
        got, expected = rounded(*args), exact(*args)
        # measured: 1e-5 at the first step (one rounded key and value per layer), up to 1e-2 once they add up
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 if step == 0 else 3e-2)
        token = int(expected.argmax(-1))
    assert expected.abs().max() > 1.0


@pytest.mark.parametrize("mode", ["bf16", "int8"])
@torch.inference_mode()
def test_native_step_agrees_with_the_pytorch_step_in_reduced_precision(sharp_model, mode):
    """Not equal (the PyTorch step rounds activations to bf16; the native step keeps them in float32), but the
    same greedy choices and logits within bf16 noise."""
    embeds, mask = _prompt(sharp_model)
    ref, ours = _decode_both(sharp_model, fast_decode.packed_lm(sharp_model.llm, mode), embeds, mask)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    # measured: mean |difference| 0.014-0.06 per step, max up to 0.43 (one logit of 12 x 49k), logits up to 9
    assert (ours - ref).abs().mean() < 0.02 * ref.abs().max()
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()


def test_cache_positions_and_tables_are_checked_not_a_crash(sharp_model):
    packed = fast_decode.packed_lm(sharp_model.llm, "none")
    embeds, mask = _prompt(sharp_model)
    state = fast_decode._Prefilled(packed, embeds, mask, 2)
    assert state.use_native()
    cos, sin = state.native_rope
    last = state.native.max_len - 1
    for k, v in state.cache:  # the step at `last` attends to slots never written (torch.empty): make them finite
        k[:, :, state.prompt_len:].zero_()
        v[:, :, state.prompt_len:].zero_()
    assert torch.isfinite(state.native(1, last, cos[last], sin[last])).all()
    for outside in (state.native.max_len, -1):
        with pytest.raises(IndexError, match="outside the KV cache"):
            state.native(1, outside, cos[0], sin[0])
    with pytest.raises(ValueError, match="RoPE tables"):
        state.native(1, last, cos[last].bfloat16(), sin[last])


def test_a_corrupt_cached_library_is_rebuilt_and_a_missing_source_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BIOMEDGPT_CACHE", str(tmp_path))
    native._library.cache_clear()
    try:
        target = native.library_path()
        target.parent.mkdir(parents=True)
        target.write_bytes(b"not a shared library")  # e.g. a truncated copy in a shared cache folder
        with caplog.at_level("WARNING"):
            assert native.load() is not None
        assert "does not load" in caplog.text and target.stat().st_size > 1000
        native._library.cache_clear()
        monkeypatch.setattr(native, "SOURCE", tmp_path / "missing.c")
        assert native.load() is None
    finally:
        native._library.cache_clear()


@torch.inference_mode()
def test_the_portable_build_without_avx512_computes_the_same(sharp_model, tmp_path):
    """Machines without AVX-512 compile the generic vector loops; they must give the same logits."""
    portable = generic_build(tmp_path)
    packed = fast_decode.packed_lm(sharp_model.llm, "int8")
    embeds, mask = _prompt(sharp_model)
    first, second = (fast_decode._Prefilled(packed, embeds, mask, 6) for _ in range(2))
    reference, ours = native.NativeStep(native.load(), packed, first.cache), native.NativeStep(portable, packed,
                                                                                               second.cache)
    cos, sin = packed.rope_tables(torch.arange(first.prompt_len + 6)[None], dtype=torch.float32)
    token = int(first.logits.argmax(-1))
    for step in range(5):
        position = first.prompt_len + step
        expected = reference(token, position, cos[0, 0, position], sin[0, 0, position])
        torch.testing.assert_close(ours(token, position, cos[0, 0, position], sin[0, 0, position]), expected,
                                   rtol=1e-4, atol=1e-4)
        token = int(expected.argmax(-1))
