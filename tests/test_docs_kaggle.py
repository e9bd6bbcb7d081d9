"""The commands of the Kaggle and sync pages of docs/, run exactly as written against the loopback Kaggle (with its
defaults: a new dataset version invisible then processing, kernels queued, run in Kaggle's image, logs streamed), S3
on loopback and this machine (the convention and the world they run in: tests/docs_commands.py). The headline:
`launch kaggle train_mlp` with no options at all -- a T4 x2 kernel on the full synthetic default -- completes."""
from __future__ import annotations

import pytest
from docs_commands import check_page, pages_of, world_fixture

docs_world = pytest.fixture(scope="module")(world_fixture)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("page", pages_of(__file__))
def test_every_command_of_the_page_does_what_the_page_says(page, docs_world, tmp_path):
    check_page(page, docs_world, tmp_path)
