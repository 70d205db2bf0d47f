"""Shared fixtures of the serving tests: one chat checkpoint and one -b 4 PEF per session."""
from __future__ import annotations

import pytest

from serve_helpers import Oracle, compile_pef, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny-chat")


@pytest.fixture(scope="session")
def pef(tmp_path_factory):
    return compile_pef(tmp_path_factory.mktemp("serve-pef"))


@pytest.fixture(scope="session")
def oracle(pef, checkpoint):
    return Oracle(pef, checkpoint)
