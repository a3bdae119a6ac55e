"""Schedules: validation, JSON round trips, the published DiffRate lists and the package data."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import pytest

import token_rate
from slimkit.errors import BadInputError
from token_rate import Schedule, list_schedules, load_schedule

# Effective per-block counts min(prune, merge) from the research notes (section 1.10).
PUBLISHED_EFFECTIVE = {
    "deit_small@2.3": [197, 180, 156, 127, 109, 98, 80, 66, 52, 37, 31, 3],
    "deit_small@2.9": [197, 194, 176, 156, 141, 133, 121, 107, 88, 64, 56, 3],
    "deit_small@3.1": [197, 196, 186, 164, 150, 141, 133, 121, 103, 78, 68, 3],
    "deit_base@11.5": [197, 197, 192, 178, 158, 145, 127, 111, 94, 50, 35, 3],
    "mae_vit_base@11.5": [197, 192, 178, 164, 150, 133, 115, 101, 96, 82, 49, 49],
    "deit_tiny@0.9": [197, 196, 194, 188, 172, 147, 129, 115, 107, 103, 96, 3],
}


def test_published_names_cover_every_family_and_target():
    names = list_schedules()
    assert len(names) == 28
    for fam, n in [("deit_tiny", 5), ("deit_small", 5), ("deit_base", 5), ("mae_vit_base", 4),
                   ("mae_vit_large", 5), ("mae_vit_huge", 4)]:
        assert sum(name.startswith(fam + "@") for name in names) == n


@pytest.mark.parametrize("name", sorted(PUBLISHED_EFFECTIVE))
def test_published_effective_counts(name):
    sched = load_schedule(name)
    assert sched.effective() == PUBLISHED_EFFECTIVE[name]
    assert sched.name == name and sched.num_tokens == 197


def test_published_raw_lists_kept_verbatim():
    large = load_schedule("mae_vit_large@42.3")
    assert large.depth == 24
    assert large.prune == [197, 197, 197, 195, 194, 193, 191, 187, 182, 180, 173, 149, 142, 134, 125, 121, 111,
                           106, 91, 87, 77, 39, 38, 32]
    huge = load_schedule("mae_vit_huge@83.7")
    assert huge.depth == 32 and huge.num_tokens == 257
    assert not huge.is_canonical()  # raw ViT-H lists go up again; the running min caps them
    eff = huge.effective()
    assert all(a >= b for a, b in itertools.pairwise(eff))


def test_canonical_is_equivalent_and_strictly_valid():
    for name in list_schedules():
        s = load_schedule(name)
        c = s.canonical()
        c.validate(strict=True)
        assert c.effective() == s.effective()


def test_validation_errors_are_clear():
    with pytest.raises(BadInputError, match="prune has 2 entries but merge has 3"):
        Schedule([5, 4], [5, 4, 3])
    with pytest.raises(BadInputError, match="below the minimum 2"):
        Schedule([5, 1], [5, 1])
    with pytest.raises(BadInputError, match="exceeds the 5 input tokens"):
        Schedule([6, 4], [5, 4], num_tokens=5)
    with pytest.raises(BadInputError, match="integers"):
        Schedule([5, 4.5], [5, 4])  # type: ignore[list-item]
    s = Schedule([9, 8], [9, 8])
    with pytest.raises(BadInputError, match="has 2 blocks but the model has 3"):
        s.validate(depth=3)
    with pytest.raises(BadInputError, match="below the minimum 6"):
        Schedule([9, 8], [9, 5]).validate(num_prefix_tokens=5)
    with pytest.raises(BadInputError, match=r"merge\[0\]=9 > prune\[0\]=8"):
        Schedule([8, 8], [9, 8]).validate(strict=True)
    with pytest.raises(BadInputError, match="grows past"):
        Schedule([9, 9], [7, 7]).validate(strict=True)


def test_unknown_name_lists_published():
    with pytest.raises(BadInputError, match=r"deit_small@2\.9"):
        load_schedule("deit_small@9.9")
    with pytest.raises(BadInputError, match="neither a file nor a published name"):
        load_schedule("no/such/file.json")


def test_json_round_trip(tmp_path):
    s = load_schedule("deit_small@2.9")
    path = tmp_path / "s.json"
    s.save(path)
    back = Schedule.load(path)
    assert back == s
    assert json.loads(path.read_text())["_type"] == "Schedule"


def test_official_entry_format_is_accepted(tmp_path):
    entry = {"prune_kept_num": "[197,196,190,168,150,139,129,117,99,78,58,3]",
             "merge_kept_num": "[197,194,176,156,141,133,121,107,88,64,56,3]"}
    s = Schedule.from_dict(entry)
    assert s.effective(197) == PUBLISHED_EFFECTIVE["deit_small@2.9"]
    merge_only = Schedule.from_dict({"prune_kept_num": "None", "merge_kept_num": "[9, 7, 5]"})
    assert merge_only.prune == [9, 7, 5]
    with pytest.raises(BadInputError, match="unknown schedule field"):
        Schedule.from_dict({"prune": [3], "merge": [3], "bogus": 1})


def test_schedule_files_ship_as_package_data():
    root = resources.files("token_rate").joinpath("data", "schedules")
    files = sorted(p.name for p in root.iterdir() if p.name.endswith(".json"))
    assert files == ["deit_base.json", "deit_small.json", "deit_tiny.json", "mae_vit_base.json",
                     "mae_vit_huge.json", "mae_vit_large.json"]


def test_full_and_from_effective():
    full = Schedule.full(4, 17)
    assert full.effective() == [17, 17, 17, 17]
    s = Schedule.from_effective([15, 9, 9, 4], num_tokens=17)
    assert s.effective() == [15, 9, 9, 4]
    assert token_rate.gmacs(token_rate.ViTDims(depth=4, embed_dim=8, num_tokens=17), s) < \
        token_rate.gmacs(token_rate.ViTDims(depth=4, embed_dim=8, num_tokens=17), full)


def test_configs_round_trip_through_dicts():
    from token_rate import DiffRateConfig, SearchConfig, ToMeConfig, config_from_dict

    cfgs = [
        DiffRateConfig(schedule=load_schedule("deit_small@2.9"), mode="weighted", trace_source=True),
        DiffRateConfig(schedule="deit_base@11.5"),
        SearchConfig(granularity=2, fix_last_block=True, init_schedule=Schedule([9, 7], [8, 5])),
        ToMeConfig(r=(8, -1.0)),
        ToMeConfig(r=[3, 2, 1]),
    ]
    for cfg in cfgs:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert config_from_dict(d) == cfg
    with pytest.raises(BadInputError, match="unknown ToMeConfig field"):
        config_from_dict({"_type": "ToMeConfig", "r": 2, "speed": 3})
    with pytest.raises(BadInputError, match="mode must be one of"):
        DiffRateConfig(schedule="deit_small@2.9", mode="fast")  # type: ignore[arg-type]
