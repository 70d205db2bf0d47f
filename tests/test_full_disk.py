"""A full disk (ENOSPC) while writing `opt -o` output or a checkpoint: a one-line error, nothing half-written."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ir.errors import CheckpointError
from runtime import checkpoint as ckpt
from tools.cli import main

IR = """graph @g {
  input %x : f32[2]
  %0 = neg(%x) : f32[2]
  output y = %0
}
"""


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_opt_output_on_a_full_disk(tmp_path, monkeypatch, capsys):
    source, target = tmp_path / "g.ir", tmp_path / "out.ir"
    source.write_text(IR)
    target.write_text("the user's earlier output\n")
    monkeypatch.setattr(os, "fsync", _no_space)
    assert main(["opt", str(source), "-p", "canonicalize", "-o", str(target)]) == 1
    assert capsys.readouterr().err.strip() == f"error: cannot write '{target}': No space left on device"
    assert target.read_text() == "the user's earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ir", "out.ir"]


def _half_written(tensors, path, metadata=None):
    path.write_bytes(b"\x00" * 100)
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("failure", [_half_written, _no_space], ids=["safetensors-enospc", "oserror-enospc"])
def test_a_checkpoint_on_a_full_disk(tmp_path, monkeypatch, failure):
    earlier = ckpt.save_checkpoint(tmp_path / "checkpoint-1", {"w": np.ones(4, np.float32)}, {"n": 1})
    monkeypatch.setattr(ckpt, "save_file", failure)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*checkpoint-1: .*No space left on device"):
        ckpt.save_checkpoint(tmp_path / "checkpoint-1", {"w": np.zeros(4, np.float32)}, {"n": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no staging folder left
    assert load_file(earlier / ckpt.WEIGHTS)["w"].tolist() == [1, 1, 1, 1]


def test_a_checkpoint_without_memory(tmp_path, monkeypatch):
    def no_memory(*_args, **_kwargs):
        raise MemoryError()
    monkeypatch.setattr(ckpt, "save_file", no_memory)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*: MemoryError"):
        ckpt.save_checkpoint(tmp_path / "checkpoint-3", {"w": np.zeros(4, np.float32)}, {"n": 2})
    assert list(tmp_path.iterdir()) == []
