"""The compiled batched decode step (`bm_decode_batch` in biomedgpt/model/native_step.c): several rows, left
padding, a prompt's beams sharing its prefix, against the PyTorch step it replaces and against HF `generate`."""

from __future__ import annotations

import shutil

import pytest
import torch
from _decode_models import CONVERSATIONS, generic_build, sharp_tiny

from biomedgpt.data.collate import collate
from biomedgpt.inference import build_example
from biomedgpt.model import fast_decode, native
from biomedgpt.model.biomedgpt import BioMedGPT

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the native step is then off and the PyTorch step runs")

@pytest.fixture(scope="module")
def sharp_model() -> BioMedGPT:
    return sharp_tiny()


def _prompts(model, rows: int):
    """`rows` prompts of different lengths (left padding), cycling through CONVERSATIONS."""
    batch = collate([build_example(model, CONVERSATIONS[i % len(CONVERSATIONS)]) for i in range(rows)],
                    model.tokenizer.pad_token_id, "left").model_inputs()
    return model.embed(batch["input_ids"], batch["molecules"], batch["proteins"]), batch["attention_mask"]


def _feed_both(packed_ref, packed_ours, embeds, mask, steps: int = 10, beams: int = 0):
    """Greedy-feed the reference's tokens to a PyTorch-step state (`packed_ref`) and a native-step state
    (`packed_ours`); with `beams`, both first expand every prompt into that many rows sharing its prefix.
    Returns their logits, [steps * rows, vocab] each."""
    reference = fast_decode._Prefilled(packed_ref, embeds, mask, steps + 1)
    ours = fast_decode._Prefilled(packed_ours, embeds, mask, steps + 1)
    if beams:
        reference.expand(beams)
        ours.expand(beams)
    assert ours.use_native(), "the native step should be available here (a C compiler is)"
    assert isinstance(ours.native, native.NativeBatchStep) and reference.native is None
    token = reference.logits.argmax(-1)
    ref_logits, our_logits = [], []
    for step in range(steps):
        ref_logits.append(reference.step(token, step))
        our_logits.append(ours.step(token, step))
        token = ref_logits[-1].argmax(-1)
    return torch.cat(ref_logits), torch.cat(our_logits)


@pytest.mark.parametrize("rows", [2, 7, 19, 40])
@torch.inference_mode()
def test_batched_step_equals_the_pytorch_step_in_float32(sharp_model, rows):
    """Row counts around the vector width (8 or 16) and the tile of two vectors: every partial tile."""
    embeds, mask = _prompts(sharp_model, rows)
    assert not bool(mask.bool().all()), "no left padding: that path went untested"
    packed = fast_decode.packed_lm(sharp_model.llm, "none")
    ref, ours = _feed_both(packed, packed, embeds, mask)
    assert ref.abs().max() > 1.0, "degenerate logits: the comparison would prove nothing"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("beams", [2, 4])
@torch.inference_mode()
def test_beams_sharing_a_padded_prefix_equal_the_pytorch_step(sharp_model, beams):
    embeds, mask = _prompts(sharp_model, 3)
    packed = fast_decode.packed_lm(sharp_model.llm, "none")
    ref, ours = _feed_both(packed, packed, embeds, mask, beams=beams)
    assert ref.abs().max() > 1.0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_batched_step_reads_reduced_precision_weights_exactly(mode):
    """On weights exactly representable in `mode`, the native batched step on the packed weights equals the PyTorch
    step on the float32 weights (the PyTorch step of `mode` itself rounds activations to bf16). Same float32 KV
    cache in both: the `mode` cache would be bf16."""
    model = sharp_tiny(1, exact_in=mode)
    with torch.inference_mode():
        full, packed = fast_decode.packed_lm(model.llm, "none"), fast_decode.packed_lm(model.llm, mode)
        assert packed.layers[0].linears[0].weight.dtype == {"bf16": torch.bfloat16, "int8": torch.int8}[mode]
        embeds, mask = _prompts(model, 5)
        reference, ours = (fast_decode._Prefilled(full, embeds, mask, 9) for _ in range(2))
        assert ours.use_native()
        ours.native = native.NativeBatchStep(native.load(), packed, ours.cache)  # `mode` weights, float32 cache
        token = reference.logits.argmax(-1)
        for step in range(8):
            expected = reference.step(token, step)
            torch.testing.assert_close(ours.step(token, step), expected, rtol=1e-4, atol=1e-4)
            token = expected.argmax(-1)
    assert expected.abs().max() > 1.0


@pytest.mark.parametrize("mode", ["bf16", "int8"])
@torch.inference_mode()
def test_batched_step_agrees_with_the_pytorch_step_in_reduced_precision(sharp_model, mode):
    """Not equal (bf16 KV cache written by each; the PyTorch step rounds activations to bf16), but the same greedy
    choices and logits within bf16 noise."""
    embeds, mask = _prompts(sharp_model, 4)
    packed = fast_decode.packed_lm(sharp_model.llm, mode)
    ref, ours = _feed_both(packed, packed, embeds, mask)
    # measured on these weights: mean |difference| 0.014-0.08 per step (the batch-1 step: 0.014-0.06), logits up to 9
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert (ours - ref).abs().mean() < 0.02 * ref.abs().max()
    assert (ours - ref).abs().max() < 0.15 * ref.abs().max()


@torch.inference_mode()
def test_each_row_of_a_batch_equals_the_row_alone(sharp_model):
    """Padding must not leak between rows: the batched step's row i equals the batch-1 step on prompt i alone."""
    packed = fast_decode.packed_lm(sharp_model.llm, "none")
    embeds, mask = _prompts(sharp_model, 4)
    batch = fast_decode._Prefilled(packed, embeds, mask, 8)
    assert batch.use_native()
    tokens = batch.logits.argmax(-1)
    batched = [batch.step(tokens, 0)]
    for row in range(4):
        real = mask[row].bool()
        alone = fast_decode._Prefilled(packed, embeds[row : row + 1, real], mask[row : row + 1, real], 8)
        assert alone.use_native() and isinstance(alone.native, native.NativeStep)
        torch.testing.assert_close(alone.logits, batch.logits[row : row + 1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(alone.step(tokens[row : row + 1], 0), batched[0][row : row + 1],
                                   rtol=1e-4, atol=1e-4)


def test_generate_runs_batches_and_beams_through_the_native_step_and_equals_hf(sharp_model, monkeypatch):
    calls = []
    original = native.NativeBatchStep.__call__
    monkeypatch.setattr(native.NativeBatchStep, "__call__",
                        lambda self, *a, **k: calls.append(self.rows) or original(self, *a, **k))
    batch = collate([build_example(sharp_model, c) for c in CONVERSATIONS], sharp_model.tokenizer.pad_token_id,
                    "left").model_inputs()
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=16)
    for extra in ({}, {"num_beams": 3}):
        calls.clear()
        ours = sharp_model.generate(**batch, engine="fast", **greedy, **extra)
        assert calls and calls[0] == 4 * extra.get("num_beams", 1), "the batched native step was not used"
        ref = sharp_model.generate(**batch, engine="hf", **greedy, **extra)
        assert len(set(ours[0].tolist())) > 3 and torch.equal(ours, ref), (extra, ours, ref)


@pytest.mark.parametrize("rows, mode", [(1, "none"), (11, "int8")])
@torch.inference_mode()
def test_any_thread_count_gives_the_same_logits(sharp_model, rows, mode):
    """The batch-1 step (one row) and the batched step split their work over the threads without changing it."""
    packed = fast_decode.packed_lm(sharp_model.llm, mode)
    embeds, mask = _prompts(sharp_model, rows)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            state = fast_decode._Prefilled(packed, embeds, mask, 5)
            assert state.use_native()
            token, logits = state.logits.argmax(-1), []
            for step in range(4):
                logits.append(state.step(token, step))
                token = logits[-1].argmax(-1)
            results.append(torch.cat(logits))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_bad_calls_are_errors_not_crashes(sharp_model):
    packed = fast_decode.packed_lm(sharp_model.llm, "none")
    embeds, mask = _prompts(sharp_model, 3)
    state = fast_decode._Prefilled(packed, embeds, mask, 2)
    assert state.use_native()
    step = state.native
    cos, sin = state.native_rope
    rows = torch.zeros(3, dtype=torch.long)
    last = step.max_len - 1
    for k, v in state.cache:  # the step at `last` attends to slots never written (torch.empty): make them finite
        k[:, :, state.prompt_len:].zero_()
        v[:, :, state.prompt_len:].zero_()
    assert torch.isfinite(step(rows, last, cos[[1, 2, 3]], sin[[1, 2, 3]], state.native_valid)).all()
    for outside in (step.max_len, -1):
        with pytest.raises(IndexError, match="outside the KV cache"):
            step(rows, outside, cos[[1, 2, 3]], sin[[1, 2, 3]])
    with pytest.raises(ValueError, match="expected 3 tokens"):
        step(rows[:2], last, cos[[1, 2, 3]], sin[[1, 2, 3]])
    with pytest.raises(ValueError, match="RoPE tables"):
        step(rows, last, cos[[1, 2]], sin[[1, 2]])
    with pytest.raises(ValueError, match="key_valid"):
        step(rows, last, cos[[1, 2, 3]], sin[[1, 2, 3]], state.native_valid[:, :-1].contiguous())
    prefix = [(k[:2, :, :4].contiguous(), v[:2, :, :4].contiguous()) for k, v in state.cache]
    with pytest.raises(ValueError, match="split evenly"):
        native.NativeBatchStep(native.load(), packed, state.cache, prefix)


@torch.inference_mode()
def test_the_portable_build_without_avx512_computes_the_same(sharp_model, tmp_path):
    """Machines without AVX-512 compile narrower tiles (8 floats, 6 weight rows); same logits."""
    portable = generic_build(tmp_path)
    packed = fast_decode.packed_lm(sharp_model.llm, "bf16")
    embeds, mask = _prompts(sharp_model, 19)
    first, second = (fast_decode._Prefilled(packed, embeds, mask, 5) for _ in range(2))
    assert first.use_native()
    second.use_native()
    second.native = native.NativeBatchStep(portable, packed, second.cache)
    token = first.logits.argmax(-1)
    for step in range(4):
        expected = first.step(token, step)
        torch.testing.assert_close(second.step(token, step), expected, rtol=1e-4, atol=1e-4)
        token = expected.argmax(-1)
