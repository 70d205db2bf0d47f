"""Target presets and custom target files."""
from __future__ import annotations

import pytest
import yaml

from backend.pef.targets import load_target, preset_names, target_from_obj
from ir.errors import ConfigError


def test_presets_match_the_public_figures():
    assert preset_names() == ["rdu-mini", "sn10", "sn30", "sn40l"]
    sn10, sn30, sn40l = (load_target(n) for n in ("sn10", "sn30", "sn40l"))
    assert (sn10.tiles, sn10.pcus, sn10.pmus, sn10.sram_bytes) == (4, 640, 640, 320 * 2**20)
    assert sn10.tier("ddr").capacity == 1.5 * 2**40
    assert (sn30.pcus, sn30.pmus, sn30.sram_bytes) == (1280, 1280, 640 * 2**20)
    assert (sn40l.pcus, sn40l.pmus, sn40l.sram_bytes) == (1040, 1040, 520 * 2**20)
    assert [(t.name, t.capacity) for t in sn40l.offchip] == [("hbm", 64 * 2**30), ("ddr", 1.5 * 2**40)]
    assert sn40l.peak_flops("bf16") == pytest.approx(638e12, rel=0.01)
    assert sn10.peak_flops("bf16") == pytest.approx(320e12, rel=0.01)
    assert sn30.peak_flops("bf16") == pytest.approx(688e12, rel=0.01)


def test_custom_target_file(tmp_path):
    text = (tmp_path / "t.yaml")
    mini = load_target("rdu-mini").to_obj()
    mini.update(name="mine", tiles=1)
    text.write_text(yaml.safe_dump(mini))
    target = load_target(str(text))
    assert (target.name, target.pcus) == ("mine", 16)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["pcu"].update(lanes=0), r"bad target field pcu.lanes: Input should be greater than 0"),
    (lambda t: t.update(tiles="many"), r"bad target field tiles: Input should be a valid integer"),
    (lambda t: t.update(clock=1), r"bad target field clock: Extra inputs are not permitted"),
    (lambda t: t["offchip"].append(dict(t["offchip"][0])), r"bad target field offchip: Value error, tier names repeat"),
    (lambda t: t["offchip"][0].update(name="onchip"), r"bad target field offchip.0.name: Value error, 'onchip' names"),
    (lambda t: t.pop("pmu"), r"bad target field pmu: Field required"),
])
def test_bad_fields_are_named(tmp_path, edit, message):
    data = load_target("rdu-mini").to_obj()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_target(path)


def test_unreadable_and_unknown_targets(tmp_path):
    with pytest.raises(ConfigError, match="unknown target 'sn99' \\(presets: rdu-mini, sn10, sn30, sn40l"):
        load_target("sn99")
    with pytest.raises(ConfigError, match="cannot read target file"):
        load_target(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}:2:1: not valid YAML"):
        load_target(bad)
    with pytest.raises(ConfigError, match="x.yaml: a target must be a mapping"):
        target_from_obj([1, 2], "x.yaml")
