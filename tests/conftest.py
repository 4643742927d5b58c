"""What every test shares: a scratch home, so that no test reads or writes the experiments,
uploads and kept variants of the person running the suite."""

from __future__ import annotations

import os

import pytest

from explorer.loading.store import HOME_ENV


@pytest.fixture(scope="session", autouse=True)
def scratch_home(tmp_path_factory):
    """``PRUNING_EXPLORER_HOME`` for the whole run (a test that needs its own sets its own)."""
    before = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(tmp_path_factory.mktemp("home"))
    yield
    if before is None:
        os.environ.pop(HOME_ENV, None)
    else:
        os.environ[HOME_ENV] = before
