"""Crafted PEFs: a compiled zoo program, its decoded payload edited, the checksum signed again.

The sha256 envelope proves a file was not damaged, not who wrote it: these are the
files an attacker can make, and the reader must refuse each before anything runs.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from typing import Callable

import msgpack

from zoo_programs import compiled

from backend.pef.file import FORMAT_VERSION, MAGIC


@functools.cache
def payload(model: str = "gpt2", inference: bool = False) -> bytes:
    """The decoded payload of a compiled zoo model (-O1, rdu-mini), as plain data."""
    return msgpack.unpackb(compiled(model, "O1", inference).pef.to_bytes(), raw=False)["payload"]


def sign(obj: dict) -> bytes:
    """`obj` as a PEF payload, with a valid envelope."""
    data = msgpack.packb(obj, use_bin_type=True)
    outer = {"magic": MAGIC, "format_version": FORMAT_VERSION,
             "sha256": hashlib.sha256(data).hexdigest(), "payload": data}
    return msgpack.packb(outer, use_bin_type=True)


def craft(edit: Callable[[dict], None], model: str = "gpt2", inference: bool = False) -> bytes:
    """The signed bytes of the zoo model's payload after `edit`."""
    obj = copy.deepcopy(msgpack.unpackb(payload(model, inference), raw=False))
    edit(obj)
    return sign(obj)


def stage(obj: dict, kind: str) -> tuple[dict, dict]:
    """(kernel, stage) of the first stage of `kind`."""
    return next((k, s) for k in obj["kernels"] for s in k["stages"] if s["kind"] == kind)


def buffer(program: dict, name: str) -> dict:
    return next(b for b in program["buffers"] if b["name"] == name)


def arena(obj: dict, name: str) -> dict:
    return next(a for a in obj["memory"]["arenas"] if a["name"] == name)


def allocation(obj: dict, tensor: str) -> dict:
    return next(a for a in obj["memory"]["allocations"] if a["tensor"] == tensor)
