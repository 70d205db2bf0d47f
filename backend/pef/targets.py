"""RDU target descriptions: plain, validated data about a chip and its node.

A target gives the chip's tiles, the PCUs (compute) and PMUs (memory) per tile,
a PCU's SIMD lanes x pipeline stages and FLOP/cycle per dtype, a PMU's bytes and
bandwidth, the clock, the off-chip memory tiers (HBM, DDR: capacity, bandwidth),
the chips per node, and the links data-parallel training reduces gradients over
(`Links`: RDU to RDU in a node, node to node, RDU to its host; a target that
does not give them gets `Links()`'s defaults, which are assumptions). Presets (`rdu-mini`, `sn10`, `sn30`, `sn40l`) live as YAML
in `backend/pef/presets/`, each citing its public figures; `load_target` also reads
a custom YAML file. Bad fields are `ConfigError`s naming the file and field.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

from ir.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
#: the memory tier of on-chip PMU scratchpads (off-chip tiers are named by the target)
ONCHIP = "onchip"
DTypeName = Literal["f32", "bf16", "f16", "i32", "i64"]


class _Plain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PCU(_Plain):
    """A pattern compute unit: a pipeline of `stages` SIMD stages, `lanes` wide."""

    lanes: PositiveInt
    stages: PositiveInt
    #: peak operations per cycle of one PCU, per element type
    flops_per_cycle: dict[DTypeName, PositiveInt]


class PMU(_Plain):
    """A pattern memory unit: a scratchpad of `bytes`, `bandwidth` bytes per cycle."""

    bytes: PositiveInt
    bandwidth: PositiveInt


class Tier(_Plain):
    """An off-chip memory tier: capacity in bytes, bandwidth in bytes per second (per chip)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    capacity: PositiveInt
    bandwidth: PositiveFloat

    @pydantic.field_validator("name")
    @classmethod
    def _not_onchip(cls, name: str) -> str:
        if name == ONCHIP:
            raise ValueError(f"'{ONCHIP}' names the on-chip tier")
        return name


class Link(_Plain):
    """A point-to-point link: bandwidth in bytes per second (each direction), latency per message in seconds."""

    bandwidth: PositiveFloat
    latency: NonNegativeFloat


class Links(_Plain):
    """The links between chips (defaults are assumptions: PCIe 4.0 x16-class links, 100 Gb/s Ethernet)."""

    #: chip to chip within a node
    rdu: Link = Link(bandwidth=32e9, latency=2e-6)
    #: node to node: one network port per node
    node: Link = Link(bandwidth=12.5e9, latency=5e-6)
    #: a chip to its host (gradients reduced on the host travel it both ways)
    host: Link = Link(bandwidth=32e9, latency=2e-6)


class Target(_Plain):
    """One RDU chip and its node."""

    name: str = Field(min_length=1)
    description: str = ""
    chips_per_node: PositiveInt
    tiles: PositiveInt
    pcus_per_tile: PositiveInt
    pmus_per_tile: PositiveInt
    pcu: PCU
    pmu: PMU
    clock_hz: PositiveFloat
    #: fastest first: tensors go to the first tier with room
    offchip: list[Tier] = Field(min_length=1)
    links: Links = Links()

    @pydantic.field_validator("offchip")
    @classmethod
    def _unique_tiers(cls, tiers: list[Tier]) -> list[Tier]:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names repeat: {names}")
        return tiers

    @property
    def pcus(self) -> int:
        """PCUs per chip."""
        return self.tiles * self.pcus_per_tile

    @property
    def pmus(self) -> int:
        """PMUs per chip."""
        return self.tiles * self.pmus_per_tile

    @property
    def sram_bytes(self) -> int:
        """On-chip memory per chip."""
        return self.pmus * self.pmu.bytes

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Peak operations per second of one chip for an element type."""
        per_cycle = self.pcu.flops_per_cycle.get(dtype, min(self.pcu.flops_per_cycle.values()))
        return self.pcus * per_cycle * self.clock_hz

    def tier(self, name: str) -> Tier:
        for tier in self.offchip:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def to_obj(self) -> dict[str, Any]:
        """Plain data (the PEF header embeds the whole target)."""
        return self.model_dump(mode="python")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _describe(err: pydantic.ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "<top level>"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def target_from_obj(data: Any, source: str) -> Target:
    """A validated target from plain data; ConfigError names `source` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a target must be a mapping of fields, got {type(data).__name__}")
    try:
        return Target.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{source}: bad target field {_describe(err)}") from None


@functools.cache
def _preset(name: str) -> Target:
    return _read(PRESETS_DIR / f"{name}.yaml")


def _read(path: Path) -> Target:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read target file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    return target_from_obj(data, str(path))


def load_target(spec: str | Path) -> Target:
    """A preset by name, or a custom target from a YAML file."""
    text = str(spec)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return _read(Path(text))
    if text in preset_names():
        return _preset(text)
    raise ConfigError(f"unknown target '{text}' (presets: {', '.join(preset_names())}; or give a .yaml file)")
