"""Data order: a pure function of (seed, epoch); length grouping; each item at most once per epoch."""

from __future__ import annotations

import random

from biomedgpt.train.loop import epoch_plan


def test_epoch_plan_is_deterministic_complete_and_grouped():
    lengths = [random.Random(i).randint(5, 500) for i in range(1000)]
    plan = epoch_plan(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert plan == epoch_plan(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert plan != epoch_plan(lengths, 8, seed=1, epoch=1, group_by_length=True)
    flat = [i for batch in plan for i in batch]
    assert len(flat) == len(set(flat)) == 1000 and all(len(b) == 8 for b in plan)

    def mean_spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    shuffled = epoch_plan(lengths, 8, seed=1, epoch=0, group_by_length=False)
    assert mean_spread(plan) < 0.2 * mean_spread(shuffled)  # far less padding per batch
    # the long batches are not all first: the batch order is shuffled after grouping
    first_half = [max(lengths[i] for i in b) for b in plan[: len(plan) // 2]]
    assert 100 < sum(first_half) / len(first_half) < 400


def test_incomplete_last_batch_is_dropped():
    plan = epoch_plan([10] * 10, 4, seed=0, epoch=0, group_by_length=False)
    assert [len(b) for b in plan] == [4, 4]
