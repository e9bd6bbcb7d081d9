"""``launch local``: the backend contract on this machine (the job a process of this machine, nothing to lose on the way)."""
from __future__ import annotations

import pytest
from conftest import cli_env
from contract import BackendContract, Target


@pytest.fixture
def target(small_shards) -> Target:
    return Target(cli_env(), small_shards)


class TestContract(BackendContract):
    pass
