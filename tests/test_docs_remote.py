"""The commands of the SSH, Ray, backend-overview and search pages of docs/, run exactly as written: ``gpu1``,
``gpu2`` and ``rented-box`` are real sshd on loopback named by ~/.ssh/config, ``head`` a two-node Ray cluster on
loopback, S3 a loopback moto (the convention and the world they run in: tests/docs_commands.py)."""
from __future__ import annotations

import pytest
from docs_commands import check_page, pages_of, world_fixture

docs_world = pytest.fixture(scope="module")(world_fixture)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("page", pages_of(__file__))
def test_every_command_of_the_page_does_what_the_page_says(page, docs_world, tmp_path):
    check_page(page, docs_world, tmp_path)
