"""Model configuration: typed fields, Hydra-style overrides, YAML files, pydantic validation.

A model declares its fields (an RDL `config` block gives a `Schema`). Values come,
in this order, from a Hugging Face `config.json`, a `--config` YAML file, flags such
as `-b`, and `key=value` overrides in Hydra's grammar (`model.n_layer=2`;
`+model.key=value` adds a key, `++` adds or changes). `resolve` validates every
value with pydantic and computes the other fields from their defaults, which may
depend on fields declared before them.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import pydantic
import yaml

from ir.errors import ConfigError, Location

#: the one config group: model fields are `model.<field>`
GROUP = "model"

#: RDL field types and their pydantic types
TYPES: dict[str, Any] = {"int": int, "float": float, "bool": pydantic.StrictBool, "str": str}

#: RDL integers are 64-bit: a config or compile-time int stays below this in magnitude
MAX_INT = 2**63

_MODES = {"CHANGE": "set", "ADD": "add", "FORCE_ADD": "force"}


@attrs.frozen
class Field:
    """A declared field: name, type (a key of `TYPES`), default and where it is declared."""

    name: str
    type: str
    #: the default, computed from the values of the fields declared before this one
    default: Callable[[dict[str, Any]], Any]
    location: Location | None = None
    context: str | None = None


@attrs.frozen
class Schema:
    """A model's fields, in declaration order."""

    fields: tuple[Field, ...] = ()

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@attrs.frozen
class Setting:
    """One given value: `key` is the field name (without `model.`)."""

    key: str
    value: Any
    origin: str
    mode: str = "set"  # set | add | force, as Hydra's `key=`, `+key=`, `++key=`
    location: Location | None = None
    context: str | None = None

    def error(self, message: str, fallback: Field | None = None) -> ConfigError:
        if self.location is not None:  # the location names the file already
            return ConfigError(message, self.location, self.context)
        where, context = (fallback.location, fallback.context) if fallback else (None, None)
        return ConfigError(f"{self.origin}: {message}", where, context)


# --- sources of settings --------------------------------------------------------------

@lru_cache(maxsize=1)
def _overrides_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _split_key(key: str, origin: str) -> str:
    group, _, name = key.partition(".")
    if group != GROUP or not name:
        raise ConfigError(f"{origin}: unknown config key '{key}' (model fields are '{GROUP}.<field>', "
                          f"e.g. {GROUP}.n_layer=2)")
    if "." in name:
        raise ConfigError(f"{origin}: '{key}' is nested too deeply (model fields are '{GROUP}.<field>')")
    return name


def parse_overrides(texts: Sequence[str]) -> list[Setting]:
    """Settings from `key=value` overrides, parsed with Hydra's override grammar."""
    from hydra.errors import HydraException

    settings = []
    for text in texts:
        origin = f"override '{text}'"
        try:
            override = _overrides_parser().parse_override(text)
        except HydraException as err:
            raise ConfigError(f"bad {origin}: {str(err).splitlines()[0]}") from None
        mode = _MODES.get(override.type.name)
        if mode is None:
            raise ConfigError(f"{origin}: deleting keys is not supported")
        if override.is_sweep_override():
            raise ConfigError(f"{origin}: sweeps (several values) are not supported")
        try:
            value = override.value()
        except HydraException as err:
            raise ConfigError(f"bad {origin}: {err}") from None
        settings.append(Setting(_split_key(override.key_or_group, origin), value, origin, mode))
    return settings


def settings_from(values: Mapping[str, Any], origin: str,
                  locations: Mapping[str, Location] | None = None, text: str | None = None) -> list[Setting]:
    """Settings from a flat mapping of field names (e.g. made from a `config.json`)."""
    out = []
    for key, value in values.items():
        where = (locations or {}).get(key)
        out.append(Setting(key, value, origin, "set", where, _line(text or "", where)))
    return out


def load_yaml(path: str | Path) -> list[Setting]:
    """Settings from a YAML file holding `model: {field: value, ...}`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node, data = _parse_yaml(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file '{path}': {getattr(err, 'strerror', None) or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = Location(str(path), mark.line + 1, mark.column + 1) if mark else None
        problem = getattr(err, "problem", None) or str(err).partition("\n")[0]
        raise ConfigError(f"invalid YAML: {problem}", where) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping like '{GROUP}: {{n_layer: 2}}'",
                          Location(str(path), 1, 1))
    positions = _key_positions(node, str(path))
    for key in data:
        if key != GROUP:
            raise ConfigError(f"unknown config group '{key}' (expected '{GROUP}')", positions.get((key,)),
                              _line(text, positions.get((key,))))
    group = data.get(GROUP) or {}
    if not isinstance(group, dict):
        raise ConfigError(f"'{GROUP}' must be a mapping of field names to values",
                          positions.get((GROUP,)), _line(text, positions.get((GROUP,))))
    locations = {k: positions[(GROUP, k)] for k in group if (GROUP, k) in positions}
    return settings_from({str(k): v for k, v in group.items()}, f"config file '{path}'", locations, text)


#: the deepest nesting a config file may have (PyYAML's composer recurses once per level)
MAX_YAML_DEPTH = 100


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing documents nested deeper than MAX_YAML_DEPTH with a YAML error at the place."""

    depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for key positions) and its plain data, from one parse."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _key_positions(node, filename: str) -> dict[tuple, Location]:
    """Where each key of the top two mapping levels stands."""
    out: dict[tuple, Location] = {}
    if not isinstance(node, yaml.MappingNode):
        return out
    for key, value in node.value:
        out[(key.value,)] = Location(filename, key.start_mark.line + 1, key.start_mark.column + 1)
        if isinstance(value, yaml.MappingNode):
            for inner, _ in value.value:
                out[(key.value, inner.value)] = Location(filename, inner.start_mark.line + 1,
                                                          inner.start_mark.column + 1)
    return out


def _line(text: str, where: Location | None) -> str | None:
    lines = text.splitlines()
    return lines[where.line - 1] if where and 0 < where.line <= len(lines) else None


# --- validation -----------------------------------------------------------------------

@lru_cache(maxsize=None)
def _adapter(type_name: str) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(TYPES[type_name])


def validate(type_name: str, value: Any) -> Any:
    """`value` as `type_name`, or ValueError saying what was expected."""
    if isinstance(value, bool) and type_name in ("int", "float"):
        raise ValueError(f"expected {type_name}, got {str(value).lower()}")
    if value is not None and not isinstance(value, (int, float, str)):  # a dtype, a list, ...
        raise ValueError(f"expected {type_name}, got {value}")
    try:
        value = _adapter(type_name).validate_python(value)
    except pydantic.ValidationError as err:
        raise ValueError(f"expected {type_name}, got {value!r} ({err.errors()[0]['msg']})") from None
    if type_name == "int" and abs(value) >= MAX_INT:
        raise ValueError(f"expected int, got {value} (beyond 64 bits)")
    return value


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _added_type(setting: Setting) -> str:
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(setting.value, kind):
            return name
    raise setting.error(f"an added key needs a number, boolean or string, got {setting.value!r}")


def _check_keys(schema: Schema, settings: Sequence[Setting]) -> tuple[dict, dict]:
    """The settings of declared fields and the added ones, last one winning."""
    declared, added = {}, {}
    for s in settings:
        exists = schema.field(s.key) is not None or s.key in added
        if s.mode == "add" and exists:
            raise s.error(f"'{GROUP}.{s.key}' already exists; change it with {GROUP}.{s.key}=...")
        if s.mode == "set" and not exists:
            names = [f"{GROUP}.{f.name}" for f in schema.fields]
            raise s.error(f"unknown config key '{GROUP}.{s.key}'{_suggest(f'{GROUP}.{s.key}', names)}; "
                          f"add a new key with +{GROUP}.{s.key}=...")
        (declared if schema.field(s.key) else added)[s.key] = s
    return declared, added


def resolve(schema: Schema, settings: Sequence[Setting] = ()) -> dict[str, Any]:
    """Every field's value: the last setting for it, else its default; added keys last."""
    declared, added = _check_keys(schema, settings)
    values: dict[str, Any] = {}
    for f in schema.fields:
        given = declared.get(f.name)
        value = given.value if given else f.default(dict(values))
        try:
            values[f.name] = validate(f.type, value)
        except ValueError as err:
            if given is None:
                raise ConfigError(f"default of '{f.name}': {err}", f.location, f.context) from None
            raise given.error(f"{GROUP}.{f.name}: {err}", f) from None
    for key, s in added.items():
        try:
            values[key] = validate(_added_type(s), s.value)
        except ValueError as err:
            raise s.error(f"{GROUP}.{key}: {err}") from None
    return values
