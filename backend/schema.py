"""A plain-data codec for the backend's attrs records (kernel programs, PEF parts).

`encode` turns a record into dicts, lists and scalars that msgpack can pack;
`decode` rebuilds a record from such data, checking every field's type against
the class annotations and every range against the class's attrs validators
(pydantic models among the fields are validated by pydantic, strictly).
Errors are `SchemaError`s naming the path of the bad field
(`kernels[3].stages[0].reads[1].strides[2]`). A class with a `kind` class
attribute is a member of a tagged union: it is encoded with its `kind`, and
a union annotation picks its member by that tag.

Each type gets its encoder and decoder built once; a decoder builds the error
path only when it fails, so valid data decodes without bookkeeping.
"""
from __future__ import annotations

import functools
import types
import typing
from typing import Any, Callable

import attrs
import pydantic

#: integers in a record must fit in a signed 63-bit range (offsets, sizes, strides)
INT_LIMIT = 2**62
_SCALARS = (int, float, str, bool, bytes, type(None))


class SchemaError(ValueError):
    """Data that does not match a record's schema; `path` names the field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path
        self.message = message

    def within(self, segment: str) -> SchemaError:
        """The same error seen from the container: `segment` is `[3]` or `.name`."""
        path = self.path if not self.path or self.path.startswith("[") else f".{self.path}"
        return SchemaError(f"{segment}{path}".lstrip("."), self.message)


# --- encoding ---------------------------------------------------------------------------
_ENCODERS: dict[type, Callable[[Any], Any]] = {}


def encode(value: Any) -> Any:
    """A record as msgpack-able plain data (tuples become lists, dict keys sorted)."""
    cls = type(value)
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _ENCODERS[cls] = _encoder(cls)
    return encoder(value)


def _encoder(cls: type) -> Callable[[Any], Any]:
    if attrs.has(cls):
        names = [f.name for f in attrs.fields(cls)]
        head = {"kind": cls.kind} if hasattr(cls, "kind") else {}
        return lambda v: {**head, **{n: encode(getattr(v, n)) for n in names}}
    if issubclass(cls, (tuple, list)):
        return lambda v: list(v) if all(type(x) in _SCALARS for x in v) else [encode(x) for x in v]
    if issubclass(cls, dict):
        return lambda v: {k: encode(v[k]) for k in sorted(v)}
    if issubclass(cls, pydantic.BaseModel):
        return lambda v: encode(v.model_dump(mode="python"))
    return lambda v: v


# --- decoding ---------------------------------------------------------------------------
def decode(annotation: Any, data: Any, path: str = "") -> Any:
    """`data` decoded as `annotation` (a record class or a typing form), or SchemaError."""
    try:
        return decoder(annotation)(data)
    except SchemaError as err:
        raise err.within(path) if path else err from None


def _show(data: Any) -> str:
    text = repr(data)
    return f"{type(data).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


@functools.cache
def decoder(annotation: Any) -> Callable[[Any], Any]:
    """The decoding function of a record class or typing form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is tuple:
        return _variadic(args[0]) if len(args) == 2 and args[1] is Ellipsis else _fixed(args)
    if origin is dict:
        return _mapping(args[1])
    if origin is typing.Literal:
        return _literal(args)
    if attrs.has(annotation):
        return _record(annotation)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return _model(annotation)
    return _scalar(annotation)


def _scalar(annotation: type) -> Callable[[Any], Any]:
    if annotation is int:
        def check_int(data):
            if type(data) is not int:
                raise SchemaError("", f"expected an int, got {_show(data)}")
            if not -INT_LIMIT <= data <= INT_LIMIT:
                raise SchemaError("", f"integer {data} out of range")
            return data
        return check_int
    if annotation is float:
        def check_float(data):
            if type(data) is float:
                return data
            if type(data) is int:
                return float(data)
            raise SchemaError("", f"expected a float, got {_show(data)}")
        return check_float
    if annotation in (str, bool, bytes, type(None)):
        name = {str: "a string", bool: "a bool", bytes: "bytes", type(None): "nil"}[annotation]

        def check(data):
            if type(data) is not annotation:
                raise SchemaError("", f"expected {name}, got {_show(data)}")
            return data
        return check
    raise TypeError(f"unsupported annotation {annotation!r}")


def _literal(allowed: tuple) -> Callable[[Any], Any]:
    def check(data):
        if not any(type(data) is type(a) and data == a for a in allowed):
            raise SchemaError("", f"expected one of {', '.join(map(repr, allowed))}, got {_show(data)}")
        return data
    return check


def _union(members: tuple) -> Callable[[Any], Any]:
    tags = {m.kind: _record(m) for m in members if attrs.has(m) and hasattr(m, "kind")}
    untagged = [_record(m) for m in members if attrs.has(m) and not hasattr(m, "kind")]
    plain = [decoder(m) for m in members if not attrs.has(m)]
    names = " or ".join(getattr(m, "__name__", str(m)) for m in members)

    def check(data):
        if tags and isinstance(data, dict):
            kind = data.get("kind")
            if not isinstance(kind, str) or kind not in tags:
                raise SchemaError("kind", f"unknown kind {kind!r:.40} (expected one of {', '.join(tags)})")
            return tags[kind](data)
        if untagged and isinstance(data, dict):
            return untagged[0](data)
        for member in plain:
            try:
                return member(data)
            except SchemaError:
                continue
        raise SchemaError("", f"expected {names}, got {_show(data)}")
    return check


def _variadic(item_type: Any) -> Callable[[Any], Any]:
    if item_type is int:
        def ints(data):
            if type(data) is not list:
                raise SchemaError("", f"expected a list, got {_show(data)}")
            if all(type(x) is int and -INT_LIMIT <= x <= INT_LIMIT for x in data):
                return tuple(data)
            return _items(decoder(int), data)
        return ints
    item = decoder(item_type)

    def items(data):
        if type(data) is not list:
            raise SchemaError("", f"expected a list, got {_show(data)}")
        return _items(item, data)
    return items


def _items(item: Callable[[Any], Any], data: list) -> tuple:
    out = []
    for i, x in enumerate(data):
        try:
            out.append(item(x))
        except SchemaError as err:
            raise err.within(f"[{i}]") from None
    return tuple(out)


def _fixed(types_: tuple) -> Callable[[Any], Any]:
    items = [decoder(t) for t in types_]

    def check(data):
        if type(data) is not list:
            raise SchemaError("", f"expected a list, got {_show(data)}")
        if len(data) != len(items):
            raise SchemaError("", f"expected {len(items)} items, got {len(data)}")
        return _items(lambda pair: pair[0](pair[1]), list(zip(items, data)))
    return check


def _mapping(value_type: Any) -> Callable[[Any], Any]:
    value = decoder(value_type)

    def check(data):
        if type(data) is not dict:
            raise SchemaError("", f"expected a map, got {_show(data)}")
        out = {}
        for key, item in data.items():
            if type(key) is not str:
                raise SchemaError("<key>", f"expected a string, got {_show(key)}")
            try:
                out[key] = value(item)
            except SchemaError as err:
                raise err.within(f"[{key!r}]") from None
        return out
    return check


def _model(model: type[pydantic.BaseModel]) -> Callable[[Any], Any]:
    def check(data):
        try:
            return model.model_validate(data, strict=True)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            raise SchemaError(".".join(str(part) for part in first["loc"]), first["msg"]) from None
    return check


@functools.cache
def _record(cls: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, decoder(hints[f.name]), f.default is attrs.NOTHING) for f in attrs.fields(cls)]
    allowed = {name for name, _, _ in fields} | ({"kind"} if hasattr(cls, "kind") else set())

    def check(data):
        if type(data) is not dict:
            raise SchemaError("", f"expected a {cls.__name__} map, got {_show(data)}")
        if not data.keys() <= allowed:
            unknown = sorted(str(k) for k in data if k not in allowed)
            raise SchemaError("", f"unknown field '{unknown[0]}' in {cls.__name__}")
        kwargs = {}
        for name, field, required in fields:
            if name in data:
                try:
                    kwargs[name] = field(data[name])
                except SchemaError as err:
                    raise err.within(f".{name}") from None
            elif required:
                raise SchemaError(name, f"missing field of {cls.__name__}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as err:
            raise SchemaError("", f"bad {cls.__name__}: {err}") from None
    return check
