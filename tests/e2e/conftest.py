"""The running app the browser tests of one module share."""

from __future__ import annotations

import pytest

from tests.e2e.harness import SHOTS, running_app


@pytest.fixture(scope="module")
def app_url():
    SHOTS.mkdir(exist_ok=True)
    with running_app() as url:
        yield url
