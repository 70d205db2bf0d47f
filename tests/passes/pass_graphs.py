"""Small graphs for pass tests, built with the IR builder."""
from __future__ import annotations

import numpy as np

from ir.builder import Builder
from ir.dtypes import f32, i32
from ir.errors import Location
from ir.graph import Graph, Phase
from ir.init import Init
from ir.types import TensorType


def classifier() -> Graph:
    """Embedding, layer norm, linear, softmax cross-entropy: every composite op of a small model."""
    b = Builder(Graph("classifier"))
    ids = b.input("ids", TensorType((2, 4), i32))
    labels = b.input("labels", TensorType((2, 4), i32))
    table = b.param("wte", TensorType((11, 8), f32), Init("normal", {"std": 0.5}))
    w = b.param("w", TensorType((5, 8), f32), Init("xavier_uniform"))
    gamma = b.param("gamma", TensorType((8,), f32), Init("ones"))
    beta = b.param("beta", TensorType((8,), f32), Init("zeros"))
    with b.in_phase(Phase.fwd), b.at(Location("model.rdl", 3, 5)):
        h = b.gather(table, ids)
        h = b.layer_norm(h, gamma, beta)
        logits = b.matmul(h, w, transpose_b=True)
        probs = b.softmax(logits)
        loss = b.cross_entropy(logits, labels)
        rms = b.rms_norm(h, gamma)
    b.output("loss", loss)
    b.output("probs", probs)
    b.output("rms", b.mean(rms, axes=(1,)))
    return b.graph


def sample_inputs() -> dict:
    return {"ids": np.array([[1, 2, 3, 4], [5, 6, 7, 10]], np.int32),
            "labels": np.array([[0, 1, 2, 3], [4, 0, 1, 2]], np.int32)}
