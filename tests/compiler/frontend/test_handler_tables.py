"""Every statement and expression the grammar can produce has exactly one lowering handler."""
from __future__ import annotations

from compiler.frontend.expressions import EXPRESSIONS
from compiler.frontend.parser import rdl_parser
from compiler.frontend.statements import STATEMENTS

#: the rules an expression node is one of (`?`-inlined in the grammar, so nodes carry their aliases)
_EXPRESSION_RULES = {"expr", "or_expr", "and_expr", "not_expr", "comparison", "sum", "term", "factor",
                     "power", "postfix", "atom"}


def _tree_names(rules) -> set[str]:
    """The node names `rules` make: the alias if there is one, else the rule's name."""
    return {r.alias or r.origin.name for r in rules}


def test_every_statement_rule_has_a_handler():
    rules = rdl_parser().rules
    statements = {str(sym.name) for r in rules if r.origin.name == "_stmt" for sym in r.expansion}
    names = _tree_names(r for r in rules if r.origin.name in statements)
    assert names == set(STATEMENTS)
    assert {"let_stmt", "let_tuple", "train_block"} <= names


def test_every_expression_node_has_a_handler():
    rules = rdl_parser().rules
    aliases = {r.alias for r in rules if r.origin.name in _EXPRESSION_RULES and r.alias}
    assert aliases == set(EXPRESSIONS)
    assert {"binop", "call", "index", "tuple", "list"} <= aliases
