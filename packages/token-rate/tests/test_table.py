"""The method table: every cell present, ToMe matched to the budget, warm start = ToMe's counts."""

from __future__ import annotations

import pytest

from slimkit.errors import BadInputError
from token_rate.bench import matched_tome_r
from token_rate.flops import analytic_macs, tome_token_counts
from token_rate.models import digits_vit
from token_rate.patch import model_dims
from token_rate.table import TableSettings, method_table, table_data, warm_start_schedule


def test_warm_start_is_tomes_token_counts_at_the_budget():
    model = digits_vit()
    dims = model_dims(model)
    target = 0.5 * analytic_macs(dims) / 1e9
    sched = warm_start_schedule(model, target)
    r = matched_tome_r(dims, target)
    assert sched.prune == [dims.num_tokens] * dims.depth
    assert sched.merge == tome_token_counts(dims, [r] * dims.depth)
    assert sched.effective(dims.num_tokens) == tome_token_counts(dims, [r] * dims.depth)


def test_table_rejects_bad_budgets():
    with pytest.raises(BadInputError, match="budget ratio"):
        method_table("digits", seeds=(0,), ratios=(1.5,), show_progress=False)
    with pytest.raises(BadInputError, match="seed"):
        method_table("digits", seeds=(), show_progress=False)


def test_train_warmup_defaults_to_a_twentieth_of_the_steps_and_an_explicit_value_wins():
    assert TableSettings(train_steps=1200).warmup() == 60
    assert TableSettings(train_steps=10).warmup() == 1
    assert TableSettings(train_steps=1200, train_warmup_steps=100).warmup() == 100
    assert TableSettings(train_steps=1200, train_warmup_steps=0).warmup() == 0


@pytest.mark.parametrize("name", ["crops", "cluttered-digits"])
def test_generated_sets_are_rgb_at_the_vit_size_with_the_test_split_held_out(name):
    train_set, held_out = table_data(name, seed=0)
    assert (len(train_set), len(held_out)) == (12000, 2000)
    assert (held_out.name, held_out.split, len(held_out.classes)) == (name, "test", 10)
    x, y = held_out[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    model = digits_vit(num_classes=10, in_chans=3)
    assert model(x[None]).shape == (1, 10)
    digits_train, digits_val = table_data("digits", seed=0)
    assert digits_val[0][0].shape == (1, 32, 32) and len(digits_train) + len(digits_val) == 1797
