"""The record codec: compiled decoders, their checks, their error paths."""
from __future__ import annotations

from typing import Literal

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import given

from backend.pef.program import KernelCost
from backend.pef.records import Access, Body, Buffer, Node
from backend.pef.schema import INT_LIMIT, SchemaError, decode, decoder, encode
from backend.pef.stages import MapStage, Stage


def _lists(data):
    """Arrays as Python lists (what msgpack's default gives), all the way down."""
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_lists(v) for v in data]
    return data


def _tuples(data):
    """Arrays as tuples (what msgpack's use_list=False gives)."""
    if isinstance(data, dict):
        return {k: _tuples(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return tuple(_tuples(v) for v in data)
    return data


def _error(annotation, data) -> str:
    with pytest.raises(SchemaError) as info:
        decode(annotation, data)
    return str(info.value)


BUFFER = Buffer("%x", "input", (2, 3), "f32", "hbm", 64)
STAGE = MapStage("%y", Body((Access("%x", 0, (3, 1)),), (), (Node("arg", "f32", (), 0), Node("neg", "f32", (0,)))))


@pytest.mark.parametrize("record", [BUFFER, STAGE, KernelCost(7, {"hbm": 24}, {"hbm": 24})])
def test_records_decode_from_lists_and_from_tuples(record):
    data = encode(record)
    annotation = Stage if hasattr(record, "kind") else type(record)
    assert decode(annotation, _lists(data)) == record
    assert decode(annotation, _tuples(data)) == record


def test_an_int_tuple_is_taken_as_it_is():
    shape = (4, 0, INT_LIMIT, -INT_LIMIT)
    assert decode(tuple[int, ...], shape) is shape
    assert decode(tuple[int, ...], list(shape)) == shape


def test_defaults_plain_and_made_by_the_class():
    data = encode(BUFFER)
    del data["tier"], data["offset"], data["strides"]
    assert decode(Buffer, data) == Buffer("%x", "input", (2, 3), "f32", "", 0, (3, 1))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("dtype"), "dtype: missing field of Buffer"),
    (lambda d: d.update(color="red"), "<root>: unknown field 'color' in Buffer"),
    (lambda d: d.update(name=3), "name: expected a string, got int 3"),
    (lambda d: d.update(offset=True), "offset: expected an int, got bool True"),
    (lambda d: d.update(offset=INT_LIMIT + 1), f"offset: integer {INT_LIMIT + 1} out of range"),
    (lambda d: d.update(shape=(2, 3.0)), r"shape[1]: expected an int, got float 3.0"),
    (lambda d: d.update(shape=(2, (3,))), "shape[1]: expected an int, got list [3]"),
    (lambda d: d.update(strides="12"), "strides: expected a list, got str '12'"),
    (lambda d: d.update(offset=-64), "<root>: bad Buffer: 'offset' must be >= 0, got -64"),
])
def test_errors_name_the_field(edit, message):
    data = _tuples(encode(BUFFER))
    edit(data)
    assert _error(Buffer, data) == message


def test_errors_deep_in_a_record_name_the_path():
    data = _tuples(encode(STAGE))
    data["body"]["nodes"][1]["args"] = (0, "1")
    assert _error(Stage, data) == "body.nodes[1].args[1]: expected an int, got str '1'"
    data = encode(STAGE)
    data["kind"] = ["map"]
    assert _error(Stage, data).startswith("kind: unknown kind ['map'] (expected one of all_reduce, concat, conv2d, ")


def test_maps_check_their_keys_and_values():
    assert decode(dict[str, int], {"hbm": 1}) == {"hbm": 1}
    assert _error(dict[str, int], {"hbm": 1, "ddr": 1.5}) == "['ddr']: expected an int, got float 1.5"
    assert _error(dict[str, int], {1: 1}) == "<key>: expected a string, got int 1"
    assert _error(dict[str, int], [("hbm", 1)]) == "<root>: expected a map, got list [['hbm', 1]]"


def test_unions_pick_a_member_by_the_data_type():
    value = int | float | None
    assert [(type(v), v) for v in (decode(value, 3), decode(value, 2.5), decode(value, None))] == \
        [(int, 3), (float, 2.5), (type(None), None)]
    assert type(decode(value, INT_LIMIT + 1)) is float  # too large an int, but a float
    assert _error(value, "3") == "<root>: expected int or float or NoneType, got str '3'"
    assert _error(value, True) == "<root>: expected int or float or NoneType, got bool True"
    assert decode(float, 2) == 2.0 and type(decode(float, 2)) is float


def test_literals_tell_types_apart():
    mode = Literal["train", 1]
    assert decode(mode, "train") == "train" and decode(mode, 1) == 1
    for bad in (True, 1.0, "Train", ["train"]):
        assert "expected one of 'train', 1" in _error(mode, bad)


def test_each_record_class_compiles_once():
    assert decoder(Buffer) is decoder(Buffer)
    assert decoder(Buffer).__code__.co_filename == "<schema decoder of backend.pef.records.Buffer>"


_ITEMS = st.one_of(st.integers(-2 * INT_LIMIT, 2 * INT_LIMIT), st.booleans(), st.floats(allow_nan=False),
                   st.text(max_size=2), st.none())


@given(st.lists(_ITEMS, max_size=6), st.booleans())
def test_int_tuples_take_exactly_the_ints_in_range(items, as_tuple):
    data = tuple(items) if as_tuple else items
    valid = all(type(x) is int and -INT_LIMIT <= x <= INT_LIMIT for x in items)
    try:
        assert decode(tuple[int, ...], data) == tuple(items) and valid
    except SchemaError as err:
        assert not valid
        bad = next(i for i, x in enumerate(items) if not (type(x) is int and -INT_LIMIT <= x <= INT_LIMIT))
        assert err.path == f"[{bad}]"


@attrs.frozen
class _Point:
    x: int
    y: float = 0.0
    tags: tuple[str, ...] = attrs.field(converter=tuple, factory=tuple)


@given(st.integers(-INT_LIMIT, INT_LIMIT), st.one_of(st.floats(allow_nan=False), st.integers(-10, 10)),
       st.lists(st.text(max_size=3), max_size=3))
def test_round_trip_of_any_valid_record(x, y, tags):
    point = _Point(x, float(y), tuple(tags))
    assert decode(_Point, _tuples(encode(point))) == point
    assert decode(_Point, {"x": x, "y": y, "tags": tags}) == point
