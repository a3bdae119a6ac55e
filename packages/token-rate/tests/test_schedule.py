"""Schedules: validation, JSON round trips, the published DiffRate lists and the package data."""

from __future__ import annotations

import itertools
import json
import types
from importlib import resources

import numpy as np
import pytest
import torch

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


def test_validation_boundaries_and_messages():
    """The edges exactly: no prefix token is allowed, a negative count is not; num_tokens may equal the minimum."""
    with pytest.raises(BadInputError, match=r"^schedule: needs at least one block$"):
        Schedule([], [])
    with pytest.raises(BadInputError, match=r"^schedule 'x': needs at least one block$"):
        Schedule([], [], name="x")
    Schedule([3, 2], [3, 1], num_prefix_tokens=0).validate()  # no CLS token: 1 patch token may remain
    Schedule([3, 2], [3, 2]).validate(num_prefix_tokens=0)
    with pytest.raises(BadInputError, match=r"^schedule: num_prefix_tokens must be >= 0, got -1$"):
        Schedule([3, 2], [3, 2]).validate(num_prefix_tokens=-1)
    Schedule([2, 2], [2, 2], num_tokens=2)  # exactly CLS + one patch token
    with pytest.raises(BadInputError, match=r"^schedule: num_tokens=1 leaves no patch token after 1 prefix tokens$"):
        Schedule([2, 2], [2, 2]).validate(num_tokens=1)


def test_strict_messages_name_the_block_and_the_fix():
    with pytest.raises(BadInputError, match=r"^schedule: merge\[2\]=9 > prune\[2\]=8 \(use Schedule\.canonical\(\)\)$"):
        Schedule([12, 10, 8], [12, 10, 9]).validate(strict=True)
    with pytest.raises(BadInputError, match=r"^schedule: prune\[2\]=11 grows past the 10 tokens left by block 1 "
                                            r"\(use Schedule\.canonical\(\)\)$"):
        Schedule([14, 12, 11], [13, 10, 9]).validate(strict=True)


def test_lists_accept_integer_valued_floats_numpy_and_tensor_integers():
    s = Schedule([5.0, np.int64(4)], [torch.tensor(5), 3])  # type: ignore[list-item]
    assert s.prune == [5, 4] and s.merge == [5, 3]
    assert all(type(v) is int for v in s.prune + s.merge)
    with pytest.raises(BadInputError, match=r"merge must hold integers, got tensor\(3\.5000\)"):
        Schedule([5, 4], [5, torch.tensor(3.5)])  # type: ignore[list-item]


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


def test_canonical_without_num_tokens_starts_from_block_zero():
    # No input count known: block 0 starts from max(prune[0], merge[0]) and keeps its prune count.
    s = Schedule([9, 9, 7], [8, 5, 6])
    c = s.canonical()
    assert (c.prune, c.merge, c.num_tokens) == ([9, 8, 5], [8, 5, 5], None)
    assert c.effective() == s.effective() == [8, 5, 5]
    # a merge count above the block's prune count is capped by the prune count
    assert Schedule([5, 4], [6, 3]).canonical().merge == [5, 3]


def test_canonical_caps_at_an_explicit_input_count():
    s = Schedule([9, 7], [8, 5])
    c = s.canonical(6)
    assert (c.prune, c.merge, c.num_tokens) == ([6, 6], [6, 5], 6)
    c.validate(strict=True)
    assert c.effective() == s.effective(6) == [6, 5]
    assert Schedule([9, 7], [8, 5], num_tokens=12).canonical(6).num_tokens == 6


def test_canonical_keeps_labels_and_metadata():
    s = load_schedule("mae_vit_huge@83.7")
    c = s.canonical()
    assert c.num_tokens == 257 and c.name == "mae_vit_huge@83.7" and c.target_gmacs == 83.7
    assert c.meta == s.meta and c.meta is not s.meta and c.meta["model"] == s.meta["model"]
    reg = Schedule([9, 8], [9, 6], num_prefix_tokens=3, name="regs", target_gmacs=1.5, meta={"k": 1})
    assert reg.canonical() == reg
    assert reg.canonical().num_prefix_tokens == 3


def test_is_canonical_checks_both_lists():
    assert Schedule([9, 7], [8, 5]).is_canonical()
    assert not Schedule([9, 7], [8, 8]).is_canonical()  # merge[1] above prune[1]; prune already canonical
    assert not Schedule([9, 9], [8, 5]).is_canonical()  # prune[1] above merge[0]; merge already canonical


def test_full_and_from_effective_fields():
    assert Schedule.full(4, 17) == Schedule([17] * 4, [17] * 4, num_tokens=17, num_prefix_tokens=1, name="full")
    assert Schedule.full(2, 9, num_prefix_tokens=3).num_prefix_tokens == 3
    s = Schedule.from_effective((15, 9), num_tokens=17, name="eff")
    assert s == Schedule([15, 9], [15, 9], num_tokens=17, num_prefix_tokens=1, name="eff")
    assert Schedule.from_effective([9, 8], num_prefix_tokens=4).num_prefix_tokens == 4
    with pytest.raises(BadInputError) as exc:
        Schedule.from_effective("15 9")  # type: ignore[arg-type]
    assert str(exc.value) == "counts must be a list of integers, got str"


def _message(d):
    with pytest.raises(BadInputError) as exc:
        Schedule.from_dict(d)
    return str(exc.value)


def test_from_dict_error_messages():
    assert _message([9, 7]) == "schedule must be a JSON object, got list"
    assert _message({"_type": "ToMeConfig", "r": 8}) == "expected a Schedule, got _type='ToMeConfig'"
    assert _message({"prune": [3], "merge": [3], "speed": 1, "bogus": 2}) == "unknown schedule field(s): bogus, speed"
    assert _message({"prune": [9, 7]}) == "schedule needs both 'prune' and 'merge' lists"
    assert _message({"merge": [9, 7]}) == "schedule needs both 'prune' and 'merge' lists"


def test_official_entries_with_one_list():
    merge_only = Schedule.from_dict({"merge_kept_num": "[9, 7, 5]"})
    assert (merge_only.prune, merge_only.merge) == ([9, 7, 5], [9, 7, 5])
    prune_only = Schedule.from_dict({"prune_kept_num": "[9, 7, 5]", "merge_kept_num": "None", "num_tokens": 9})
    assert (prune_only.prune, prune_only.merge, prune_only.num_tokens) == ([9, 7, 5], [9, 7, 5], 9)
    assert Schedule.from_dict({"prune_kept_num": [9, 7]}).merge == [9, 7]
    assert _message({"prune_kept_num": "None", "merge_kept_num": None}) == \
        "official schedule entry needs a 'prune_kept_num' or 'merge_kept_num' list"


def test_official_list_parse_errors():
    bad = "[197, 180,"
    try:
        json.loads(bad)
    except json.JSONDecodeError as e:
        why = str(e)
    assert _message({"prune_kept_num": bad, "merge_kept_num": "[9]"}) == \
        f"cannot parse kept-token list '[197, 180,': {why}"
    assert _message({"prune_kept_num": "[9]", "merge_kept_num": "9"}) == \
        "kept-token list must be a list of integers, got int"


def test_published_dims_of_a_family():
    assert token_rate.schedule.published_dims("deit_small@2.9") == {
        "depth": 12, "embed_dim": 384, "num_tokens": 197, "patch_size": 16, "in_chans": 3, "num_classes": 1000,
        "mlp_ratio": 4.0, "num_prefix_tokens": 1, "global_pool": "token", "model": "deit_small_patch16_224"}
    huge = token_rate.schedule.published_dims("mae_vit_huge")
    assert (huge["depth"], huge["num_tokens"], huge["patch_size"]) == (32, 257, 14)
    with pytest.raises(BadInputError) as exc:
        token_rate.schedule.published_dims("deit_huge@9.9")
    assert str(exc.value) == ("unknown schedule family 'deit_huge'; known: deit_base, deit_small, deit_tiny, "
                              "mae_vit_base, mae_vit_huge, mae_vit_large")


def test_published_schedules_load_from_a_zipped_package(tmp_path, monkeypatch):
    """Package data read through importlib.resources Traversables (a zip install has no ordered paths)."""
    import zipfile

    from token_rate import schedule as schedule_mod

    root = resources.files("token_rate").joinpath("data", "schedules")
    archive = tmp_path / "token_rate.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(root.iterdir(), key=lambda p: p.name, reverse=True):
            if p.name.endswith(".json"):
                zf.writestr(f"token_rate/data/schedules/{p.name}", p.read_bytes())
    installed = list_schedules()
    zipped = types.SimpleNamespace(files=lambda pkg: zipfile.Path(archive, f"{pkg}/"))
    monkeypatch.setattr(schedule_mod, "resources", zipped)
    monkeypatch.setattr(schedule_mod, "_CACHE", {})
    assert list_schedules() == installed  # families in file-name order, whatever the archive order
    assert load_schedule("deit_small@2.9").effective() == PUBLISHED_EFFECTIVE["deit_small@2.9"]


def test_published_family_fields_reach_the_schedule(tmp_path, monkeypatch):
    """A family file's dims (prefix tokens included) and labels end up on every schedule loaded from it."""
    import zipfile

    from token_rate import schedule as schedule_mod

    family = {"family": "vit_reg", "model": "vit_reg_tiny", "source": "test", "global_pool": "avg",
              "dims": {"depth": 2, "embed_dim": 8, "num_tokens": 9, "patch_size": 4, "in_chans": 3,
                       "num_classes": 10, "mlp_ratio": 4.0, "num_prefix_tokens": 3},
              "schedules": {"0.5": {"prune": [9, 7], "merge": [8, 5]}}}
    archive = tmp_path / "token_rate.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("token_rate/data/schedules/vit_reg.json", json.dumps(family))
    zipped = types.SimpleNamespace(files=lambda pkg: zipfile.Path(archive, f"{pkg}/"))
    monkeypatch.setattr(schedule_mod, "resources", zipped)
    monkeypatch.setattr(schedule_mod, "_CACHE", {})
    s = load_schedule("vit_reg@0.5")
    assert s == Schedule([9, 7], [8, 5], num_tokens=9, num_prefix_tokens=3, name="vit_reg@0.5", target_gmacs=0.5,
                         meta={"model": "vit_reg_tiny", "source": "test", "global_pool": "avg",
                               "dims": family["dims"]})


def test_missing_schedule_file_message_lists_the_published_names():
    with pytest.raises(BadInputError) as exc:
        load_schedule("no/such/file.json")
    assert str(exc.value) == ("schedule 'no/such/file.json' is neither a file nor a published name; published: "
                              + ", ".join(list_schedules()))


def test_type_errors_name_the_list():
    for args, text in [(("9 7", [9, 7]), "prune must be a list of integers, got str"),
                       (([9, 7], 9), "merge must be a list of integers, got int"),
                       (([9, 7.5], [9, 7]), "prune must hold integers, got 7.5"),
                       (([9, 7], [9, None]), "merge must hold integers, got None")]:
        with pytest.raises(BadInputError) as exc:
            Schedule(*args)
        assert str(exc.value) == text
