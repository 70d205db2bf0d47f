"""A plain-data codec for the backend's attrs records (kernel programs, PEF parts).

`encode` turns a record into dicts, lists and scalars that msgpack can pack;
`decode` rebuilds a record from such data, checking every field's type against
the class annotations and every range against the class's attrs validators
(pydantic models among the fields are validated by pydantic, strictly).
Errors are `SchemaError`s naming the path of the bad field
(`kernels[3].stages[0].reads[1].strides[2]`). A class with a `kind` class
attribute is a member of a tagged union: it is encoded with its `kind`, and
a union annotation picks its member by that tag.
"""
from __future__ import annotations

import functools
import types
import typing
from typing import Any

import attrs
import pydantic

#: integers in a record must fit in a signed 63-bit range (offsets, sizes, strides)
INT_LIMIT = 2**62


class SchemaError(ValueError):
    """Data that does not match a record's schema; `path` names the field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path
        self.message = message


def encode(value: Any) -> Any:
    """A record as msgpack-able plain data (tuples become lists, dict keys sorted)."""
    if attrs.has(type(value)):
        out = {"kind": value.kind} if hasattr(type(value), "kind") else {}
        for field in attrs.fields(type(value)):
            out[field.name] = encode(getattr(value, field.name))
        return out
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(value[k]) for k in sorted(value)}
    if hasattr(value, "model_dump"):
        return encode(value.model_dump(mode="python"))
    return value


def decode(annotation: Any, data: Any, path: str = "") -> Any:
    """`data` decoded as `annotation` (a record class or a typing form), or SchemaError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(typing.get_args(annotation), data, path)
    if origin is tuple:
        return _decode_tuple(typing.get_args(annotation), data, path)
    if origin is dict:
        return _decode_dict(typing.get_args(annotation), data, path)
    if origin is typing.Literal:
        if not any(type(data) is type(a) and data == a for a in typing.get_args(annotation)):
            allowed = ", ".join(map(repr, typing.get_args(annotation)))
            raise SchemaError(path, f"expected one of {allowed}, got {_show(data)}")
        return data
    if attrs.has(annotation):
        return _decode_record(annotation, data, path)
    if hasattr(annotation, "model_validate"):
        return _decode_model(annotation, data, path)
    return _decode_scalar(annotation, data, path)


def _decode_model(model: Any, data: Any, path: str) -> Any:
    """A pydantic model, validated strictly."""
    try:
        return model.model_validate(data, strict=True)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join([path] * bool(path) + [str(part) for part in first["loc"]])
        raise SchemaError(where, first["msg"]) from None


def _show(data: Any) -> str:
    text = repr(data)
    return f"{type(data).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _decode_scalar(annotation: Any, data: Any, path: str) -> Any:
    if annotation is type(None):
        if data is not None:
            raise SchemaError(path, f"expected nil, got {_show(data)}")
        return None
    if annotation is bool:
        if not isinstance(data, bool):
            raise SchemaError(path, f"expected a bool, got {_show(data)}")
        return data
    if annotation is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise SchemaError(path, f"expected an int, got {_show(data)}")
        if not -INT_LIMIT <= data <= INT_LIMIT:
            raise SchemaError(path, f"integer {data} out of range")
        return data
    if annotation is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SchemaError(path, f"expected a float, got {_show(data)}")
        return float(data)
    if annotation is str:
        if not isinstance(data, str):
            raise SchemaError(path, f"expected a string, got {_show(data)}")
        return data
    if annotation is bytes:
        if not isinstance(data, bytes):
            raise SchemaError(path, f"expected bytes, got {_show(data)}")
        return data
    raise TypeError(f"unsupported annotation {annotation!r}")


def _decode_union(members: tuple, data: Any, path: str) -> Any:
    records = [m for m in members if attrs.has(m)]
    if records and isinstance(data, dict):
        tags = {m.kind: m for m in records if hasattr(m, "kind")}
        if tags:
            kind = data.get("kind")
            if not isinstance(kind, str) or kind not in tags:
                raise SchemaError(f"{path}.kind", f"unknown kind {kind!r:.40} (expected one of {', '.join(tags)})")
            return _decode_record(tags[kind], data, path)
        return _decode_record(records[0], data, path)
    for member in members:
        if attrs.has(member):
            continue
        try:
            return decode(member, data, path)
        except SchemaError:
            continue
    expected = " or ".join(getattr(m, "__name__", str(m)) for m in members)
    raise SchemaError(path, f"expected {expected}, got {_show(data)}")


def _decode_tuple(args: tuple, data: Any, path: str) -> tuple:
    if not isinstance(data, list):
        raise SchemaError(path, f"expected a list, got {_show(data)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(decode(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
    if len(data) != len(args):
        raise SchemaError(path, f"expected {len(args)} items, got {len(data)}")
    return tuple(decode(a, item, f"{path}[{i}]") for i, (a, item) in enumerate(zip(args, data)))


def _decode_dict(args: tuple, data: Any, path: str) -> dict:
    if not isinstance(data, dict):
        raise SchemaError(path, f"expected a map, got {_show(data)}")
    key_type, value_type = args
    out = {}
    for key, item in data.items():
        decode(key_type, key, f"{path}<key>")
        out[key] = decode(value_type, item, f"{path}[{key!r}]")
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_record(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(path, f"expected a {cls.__name__} map, got {_show(data)}")
    fields = {f.name: f for f in attrs.fields(cls)}
    tagged = hasattr(cls, "kind")
    unknown = sorted(str(k) for k in data if k not in fields and not (tagged and k == "kind"))
    if unknown:
        raise SchemaError(path, f"unknown field '{unknown[0]}' in {cls.__name__}")
    hints = _hints(cls)
    kwargs = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if field.default is attrs.NOTHING:
                raise SchemaError(where, f"missing field of {cls.__name__}")
            continue
        kwargs[name] = decode(hints[name], data[name], where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, SchemaError):
            raise
        raise SchemaError(path, f"bad {cls.__name__}: {err}") from None
