"""Settings dataclasses as flags: the printed flags parse back to the same settings, bad values are one line."""

from __future__ import annotations

import argparse

import pytest

from arbitrary_quant.bivit_training import BiViTTableSettings
from arbitrary_quant.dfsq_table import DFSQTableSettings
from arbitrary_quant.flags import add_settings_flags, settings_flags, settings_from_args
from slimkit.errors import BadInputError


@pytest.mark.parametrize(
    "settings",
    [DFSQTableSettings(), DFSQTableSettings(bits=(4,), seeds=(3, 4), eval_max_size=96, lr=0.002),
     BiViTTableSettings(), BiViTTableSettings(data="crops", seeds=(7,), top_k=4)],
)  # fmt: skip
def test_printed_flags_parse_back_to_the_same_settings(settings) -> None:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, type(settings)())
    args = parser.parse_args(settings_flags(settings).split())
    assert settings_from_args(type(settings), args) == settings


def test_unset_fields_are_left_out_and_bad_values_are_one_line() -> None:
    assert "--eval-max-size" not in settings_flags(DFSQTableSettings())
    assert settings_flags(BiViTTableSettings()).startswith("--data digits --seeds 0,1,2 --image-size 32 ")
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, DFSQTableSettings())
    with pytest.raises(BadInputError, match="--bits: cannot read 'a'"):
        settings_from_args(DFSQTableSettings, parser.parse_args(["--bits", "a"]))
    with pytest.raises(BadInputError, match="train_steps must be an integer >= 1"):
        settings_from_args(DFSQTableSettings, parser.parse_args(["--train-steps", "0"]))
