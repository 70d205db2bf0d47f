"""The decompose pass: no composite op survives, semantics, locations and phases are kept."""
from __future__ import annotations

import numpy as np
from pass_graphs import classifier, sample_inputs

from compiler.passes import PassManager
from ir.interpreter import interpret
from ir.ops import lookup


def test_decompose_expands_every_composite_op_and_keeps_semantics():
    graph = classifier()
    composites = sum(lookup(op.name).is_composite() for op in graph.walk())
    inputs = sample_inputs()
    before = interpret(graph, inputs)
    pm = PassManager.parse("decompose")
    graph = pm.run(graph)
    assert not [op.name for op in graph.walk() if lookup(op.name).is_composite()]
    after = interpret(graph, inputs)
    for name, value in before.outputs.items():
        np.testing.assert_allclose(after.outputs[name], value, rtol=1e-5, atol=1e-6)
    # the five composites of the input, and those their expansions produce (means, log_softmax)
    assert composites == 5
    assert pm.counters["decompose.ops-expanded"] > composites


def test_decompose_keeps_locations_and_phases():
    graph = PassManager.parse("decompose").run(classifier())
    tagged = [op for op in graph.ops if op.locs]
    assert tagged and all(str(op.locs[0]) == "model.rdl:3:5" and op.phase.value == "fwd" for op in tagged)
    untagged = [op for op in graph.ops if not op.locs]
    assert untagged and all(op.phase is None for op in untagged)


def test_decompose_is_deterministic():
    from ir.printer import print_graph

    texts = {print_graph(PassManager.parse("decompose").run(classifier())) for _ in range(2)}
    assert len(texts) == 1
