"""Fixtures every backup source's tests use: a stand-in program in the test's folder,
and a folder another user can reach (for runuser wrappers)."""

from __future__ import annotations

import pytest

from tests.backups.test_command import StandIn, public_folder


@pytest.fixture
def standin(tmp_path) -> StandIn:
    return StandIn(tmp_path)


@pytest.fixture
def public_dir():
    with public_folder() as folder:
        yield folder
