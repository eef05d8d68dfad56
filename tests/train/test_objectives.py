"""The shared-prefix KV cache of a frozen LM changes nothing but speed: same loss, same adapter gradients."""

from __future__ import annotations

import pytest
import torch

from biomedgpt.data.records import QARecord, write_jsonl
from biomedgpt.train.datasets import QAExamples
from biomedgpt.train.objectives import CausalLMObjective


def _loss_and_grad(model, batch, prefix: bool):
    model.zero_grad(set_to_none=True)
    objective = CausalLMObjective(model, frozen_lm_prefix=prefix)
    loss, count = objective(batch)
    loss.backward()
    grads = [p.grad.clone() for p in (model.proj_mol.weight, model.proj_prot.weight) if p.grad is not None]
    return float(loss.detach()), int(count), grads, objective


@pytest.mark.parametrize("rows", [[0, 1, 4, 5], [2]])
def test_prefix_cache_matches_the_full_forward(tiny_model_factory, train_files, tmp_path, rows):
    model = tiny_model_factory()
    model.llm.requires_grad_(False)
    model.train()
    dataset = QAExamples.from_files([str(train_files["qa"])], model, 400, None)
    batch = dataset.collate(rows, 0)
    full_loss, full_count, full_grads, _ = _loss_and_grad(model, batch, prefix=False)
    loss, count, grads, objective = _loss_and_grad(model, batch, prefix=True)
    assert objective._prefixes, "the prefix path was not taken"
    assert count == full_count and loss == pytest.approx(full_loss, rel=1e-5)
    for got, want in zip(grads, full_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_prefix_never_swallows_targets(tiny_model_factory, tmp_path):
    """One text-only row: every prompt token is 'shared', but the prefix must stop before the answer."""
    model = tiny_model_factory()
    model.llm.requires_grad_(False)
    path = tmp_path / "text.jsonl"
    write_jsonl(path, [QARecord(id="t", question="Is water wet?", answer="Yes, it is.")])
    batch = QAExamples.from_files([str(path)], model, 400, None).collate([0], 0)
    with torch.no_grad():
        full = CausalLMObjective(model)(batch)
        cached = CausalLMObjective(model, frozen_lm_prefix=True)(batch)
    assert int(cached[1]) == int(full[1]) == batch.num_targets()
    assert float(cached[0]) == pytest.approx(float(full[0]), rel=1e-5)
