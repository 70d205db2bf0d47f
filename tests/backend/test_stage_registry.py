"""The stage registry: one declaration per stage kind, one runtime lowering each, no other switch on kinds."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import attrs
import pytest

import ir.ops  # noqa: F401  (registers the ops)
from backend.pef.stages import STAGE_KINDS, STAGE_OF_OP, StageKind
from ir.ops.base import REGISTRY
from runtime.jit.kernel import LOWERINGS

ROOT = Path(__file__).resolve().parents[2]
#: where a stage kind may be named: its declaration and its runtime lowering
DECLARED_IN = ("backend/pef/stages/", "runtime/jit/")
#: string literals equal to a stage kind that mean something else there: an attribute type,
#: a parameter name
OTHER_MEANINGS = {("ir/ops/base.py", "literal"), ("ir/ops/create.py", "literal"), ("ir/ops/collective.py", "reduce")}


def test_every_op_with_a_stage_hook_is_claimed_by_exactly_one_declaration():
    hooked = {name for name, op in REGISTRY.items() if op.stage is not None}
    assert hooked == set(STAGE_OF_OP)
    assert sum(len(d.ops) for d in STAGE_KINDS.values()) == len(STAGE_OF_OP)


@pytest.mark.parametrize("kind", sorted(STAGE_KINDS))
def test_each_declaration_is_complete(kind):
    declaration = STAGE_KINDS[kind]
    assert attrs.has(declaration) and attrs.fields(declaration)[0].name == "out"
    assert declaration.kind == kind
    assert declaration.check is not StageKind.check and declaration.reference is not StageKind.reference
    assert (declaration.lower.__func__ is not StageKind.lower.__func__) == bool(declaration.ops)


@pytest.mark.parametrize("kind", sorted(STAGE_KINDS))
def test_each_kind_runs_natively_or_on_the_host(kind):
    declaration = STAGE_KINDS[kind]
    assert (declaration in LOWERINGS) != declaration.on_host


def _sources():
    for folder in ("backend", "compiler", "ir", "runtime", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(DECLARED_IN):
                yield relative, path.read_text()


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except ValueError:  # an f-string
        return None


def test_no_code_outside_the_declarations_switches_on_a_stage_kind():
    """A kind's name as a string (other than where it is also an op's name) or its class is named
    only by its declaration and its runtime lowering; the lowering builds its own `map` and
    `literal` stages."""
    classes = {d.__name__ for d in STAGE_KINDS.values()}
    builders = {"backend/lowering.py": {"MapStage", "LiteralStage"}}
    found = []
    for relative, text in _sources():
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING:
                value = _literal(token.string)
                if value in STAGE_KINDS and value not in REGISTRY and (relative, value) not in OTHER_MEANINGS:
                    found.append(f"{relative}:{token.start[0]}: {token.string}")
            elif token.type == tokenize.NAME and token.string in classes \
                    and token.string not in builders.get(relative, ()):
                found.append(f"{relative}:{token.start[0]}: {token.string}")
    assert found == []
