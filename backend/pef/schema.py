"""A plain-data codec for the backend's attrs records (kernel programs, PEF parts).

`encode` turns a record into dicts, lists and scalars that msgpack can pack;
`decode` rebuilds a record from such data, checking every field's type against
the class annotations and every range against the class's attrs validators
(pydantic models among the fields are validated by pydantic, strictly).
Errors are `SchemaError`s naming the path of the bad field
(`kernels[3].stages[0].reads[1].strides[2]`). A class with a `kind` class
attribute is a member of a tagged union: it is encoded with its `kind`, and
a union annotation picks its member by that tag. A sequence is a list or a
tuple (msgpack's `use_list=False` gives tuples, which decode without a copy).

Each type's decoder is built once. A record's decoder is one function
generated from its fields and compiled (as attrs compiles `__init__`): scalar
and integer-tuple checks are inlined, nested records and containers call
their own decoders, and the record is built with one call of its class (its
attrs validators run there). Valid data decodes without bookkeeping: an
error's path is built only as the error propagates, and a container finds the
bad item's index only after one has failed.
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
_SEQUENCES = (list, tuple)
#: what a scalar annotation is called in errors
_NAMES = {str: "a string", bool: "a bool", bytes: "bytes", type(None): "nil"}


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
    """A bad value for an error message (a msgpack array reads as a list, tuple or not)."""
    data = _lists(data)
    text = repr(data)
    return f"{type(data).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _expected(what: str, data: Any) -> SchemaError:
    return SchemaError("", f"expected {what}, got {_show(data)}")


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


def _int_error(data: Any) -> SchemaError:
    if type(data) is not int:
        return _expected("an int", data)
    return SchemaError("", f"integer {data} out of range")


def _to_float(data: Any) -> float:
    """A float field's value: a float, or an int made one."""
    if type(data) is float:
        return data
    if type(data) is int:
        return float(data)
    raise _expected("a float", data)


def _scalar(annotation: type) -> Callable[[Any], Any]:
    if annotation is int:
        def check_int(data):
            if type(data) is not int or not -INT_LIMIT <= data <= INT_LIMIT:
                raise _int_error(data)
            return data
        return check_int
    if annotation is float:
        return _to_float
    if annotation in _NAMES:
        def check(data):
            if type(data) is not annotation:
                raise _expected(_NAMES[annotation], data)
            return data
        return check
    raise TypeError(f"unsupported annotation {annotation!r}")


def _literal(allowed: tuple) -> Callable[[Any], Any]:
    accepted = frozenset((type(a), a) for a in allowed)
    kinds = frozenset(type(a) for a in allowed)

    def check(data):
        if type(data) not in kinds or (type(data), data) not in accepted:
            raise _expected(f"one of {', '.join(map(repr, allowed))}", data)
        return data
    return check


def _accepts(annotation: Any) -> frozenset[type] | None:
    """The Python types a plain (non-record) annotation's decoder may accept; None: any."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return frozenset(type(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return frozenset(_SEQUENCES)
    if origin is dict:
        return frozenset({dict})
    if annotation is float:
        return frozenset({float, int})
    if annotation is int or annotation in _NAMES:
        return frozenset({annotation})
    return None


def _union(members: tuple) -> Callable[[Any], Any]:
    tags = {m.kind: _record(m) for m in members if attrs.has(m) and hasattr(m, "kind")}
    untagged = [_record(m) for m in members if attrs.has(m) and not hasattr(m, "kind")]
    plain = [(decoder(m), _accepts(m)) for m in members if not attrs.has(m)]
    names = " or ".join(getattr(m, "__name__", str(m)) for m in members)

    @functools.cache
    def candidates(kind: type) -> tuple[Callable[[Any], Any], ...]:
        """The plain members that may take data of this type, in order."""
        return tuple(member for member, accepted in plain if accepted is None or kind in accepted)

    def check(data):
        if tags and type(data) is dict:
            kind = data.get("kind")
            if not isinstance(kind, str) or kind not in tags:
                raise SchemaError("kind", f"unknown kind {_lists(kind)!r:.40} (expected one of {', '.join(tags)})")
            return tags[kind](data)
        if untagged and type(data) is dict:
            return untagged[0](data)
        for member in candidates(type(data)):
            try:
                return member(data)
            except SchemaError:
                continue
        raise _expected(names, data)
    return check


_INT = frozenset({int})


def _ints_ok(data: tuple | list) -> bool:
    """All items are ints in range (checked in C: map, issuperset, min, max)."""
    return _INT.issuperset(map(type, data)) and (not data or -INT_LIMIT <= min(data) and max(data) <= INT_LIMIT)


def _sequence(data: Any) -> None:
    if type(data) is not list and type(data) is not tuple:
        raise _expected("a list", data)


def _locate(item: Callable[[Any], Any], data: Any, err: SchemaError) -> typing.NoReturn:
    """After `err` from a whole sequence: the first failing item's error, with its index in the path."""
    for i, x in enumerate(data):
        try:
            item(x)
        except SchemaError as inner:
            raise inner.within(f"[{i}]") from None
    raise err


def _variadic(item_type: Any) -> Callable[[Any], Any]:
    item = decoder(item_type)
    if item_type is int:
        def ints(data):
            _sequence(data)
            if not _ints_ok(data):
                _locate(item, data, _expected("a list of ints", data))
            return tuple(data)
        return ints

    def items(data):
        _sequence(data)
        try:
            return tuple([item(x) for x in data])
        except SchemaError as err:
            _locate(item, data, err)
    return items


def _fixed(types_: tuple) -> Callable[[Any], Any]:
    items = [decoder(t) for t in types_]

    def check(data):
        _sequence(data)
        if len(data) != len(items):
            raise SchemaError("", f"expected {len(items)} items, got {len(data)}")
        pairs = list(zip(items, data))
        try:
            return tuple([item(x) for item, x in pairs])
        except SchemaError as err:
            _locate(lambda pair: pair[0](pair[1]), pairs, err)
    return check


def _mapping(value_type: Any) -> Callable[[Any], Any]:
    value = decoder(value_type)

    def check(data):
        if type(data) is not dict:
            raise _expected("a map", data)
        if not set(map(type, data)) <= {str}:
            key = next(k for k in data if type(k) is not str)
            raise SchemaError("<key>", f"expected a string, got {_show(key)}")
        try:
            return {key: value(item) for key, item in data.items()}
        except SchemaError:
            for key, item in data.items():
                try:
                    value(item)
                except SchemaError as err:
                    raise err.within(f"[{key!r}]") from None
            raise
    return check


def _lists(data: Any) -> Any:
    """Tuples as lists, all the way down: for pydantic's strict mode (a list only) and for messages."""
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    if isinstance(data, _SEQUENCES):
        return [_lists(v) for v in data]
    return data


def _model(model: type[pydantic.BaseModel]) -> Callable[[Any], Any]:
    def check(data):
        try:
            return model.model_validate(_lists(data), strict=True)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            raise SchemaError(".".join(str(part) for part in first["loc"]), first["msg"]) from None
    return check


# --- record decoders: generated, one function per class ------------------------------------
def _unknown(data: dict, allowed: frozenset[str], title: str) -> SchemaError:
    unknown = sorted(str(k) for k in data if k not in allowed)
    return SchemaError("", f"unknown field '{unknown[0]}' in {title}")


def _inline(annotation: Any, name: str, env: dict[str, Any]) -> list[str]:
    """Lines checking (and perhaps converting) local `v` as `annotation`; `name` keys `env`."""
    if annotation is int:
        return ["if type(v) is not int or not -INT_LIMIT <= v <= INT_LIMIT:", "    raise _int_error(v)"]
    if annotation is float:
        return ["if type(v) is not float:", "    v = _to_float(v)"]
    if annotation in _NAMES:
        env[f"{name}_type"] = annotation
        return [f"if type(v) is not {name}_type:", f"    raise _expected({_NAMES[annotation]!r}, v)"]
    if annotation == tuple[int, ...]:  # _ints_ok inlined; an empty tuple needs no check
        return ["if type(v) is not tuple or v and not (_INT.issuperset(map(type, v))",
                "                                   and -INT_LIMIT <= min(v) and max(v) <= INT_LIMIT):",
                "    v = _int_tuple(v)"]
    env[name] = decoder(annotation)
    return [f"v = {name}(v)"]


#: the names every generated decoder uses
_RECORD_ENV: dict[str, Any] = {
    "SchemaError": SchemaError, "INT_LIMIT": INT_LIMIT, "_int_error": _int_error,
    "_to_float": _to_float, "_expected": _expected, "_INT": _INT, "_unknown": _unknown,
    "_int_tuple": decoder(tuple[int, ...])}


def _indented(lines: list[str]) -> list[str]:
    return [f"    {line}" for line in lines]


def _field(f: attrs.Attribute, i: int, check: list[str], title: str, env: dict[str, Any]) -> list[str]:
    """Lines setting `a{i}` (or `kw[...]`, for a default its class makes) from field `f` of `data`."""
    check = ["try:", *_indented(check), "except SchemaError as err:", f"    raise err.within('.{f.name}') from None"]
    fetch = ["try:", f"    v = data[{f.name!r}]", "except KeyError:"]
    if f.default is attrs.NOTHING:
        return [*fetch, f"    raise SchemaError({f.name!r}, 'missing field of {title}') from None", *check, f"a{i} = v"]
    if isinstance(f.default, attrs.Factory):
        return [*fetch, "    pass", "else:", *_indented(check), f"    kw[{f.alias!r}] = v"]
    env[f"default{i}"] = f.default
    return [*fetch, f"    a{i} = default{i}", "else:", *_indented(check), f"    a{i} = v"]


@functools.cache
def _record(cls: type) -> Callable[[Any], Any]:
    """The compiled decoder of an attrs record class."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in attrs.fields(cls) if f.init]
    made = [isinstance(f.default, attrs.Factory) for f in fields]
    title = cls.__name__
    allowed = frozenset(f.name for f in fields) | ({"kind"} if hasattr(cls, "kind") else set())
    env = dict(_RECORD_ENV, cls=cls, allowed=allowed)
    body = ["if type(data) is not dict:", f"    raise _expected('a {title} map', data)",
            "if not data.keys() <= allowed:", f"    raise _unknown(data, allowed, {title!r})",
            *(["kw = {}"] if any(made) else [])]
    for i, f in enumerate(fields):
        body += _field(f, i, _inline(hints[f.name], f"d{i}", env), title, env)
    args = [f"{f.alias}=a{i}" for i, f in enumerate(fields) if not made[i]] + (["**kw"] if any(made) else [])
    body += ["try:", f"    return cls({', '.join(args)})", "except (ValueError, TypeError) as err:",
             f"    raise SchemaError('', f'bad {title}: {{err}}') from None"]
    source = "\n".join([f"def decode_{title}(data):", *_indented(body), ""])
    exec(compile(source, f"<schema decoder of {cls.__module__}.{cls.__qualname__}>", "exec"), env)  # noqa: S102
    return env[f"decode_{title}"]
