"""The upload limit reads the same on the page and in Streamlit's own uploaders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from explorer.engine.limits import DEFAULT_MAX_UPLOAD_MB, upload_limit_text

ROOT = Path(__file__).resolve().parents[2]


def test_streamlits_configured_limit_is_the_apps_default():
    config = (ROOT / ".streamlit" / "config.toml").read_text()  # tomllib is 3.11+
    assert re.findall(r"^maxUploadSize = (\d+)$", config, re.M) == [str(DEFAULT_MAX_UPLOAD_MB)]


@pytest.mark.parametrize(
    ("megabytes", "shown"),
    [
        # Streamlit's dropzone: bytes in decimal units, the next unit once past 500, 0 decimals
        (1, "1 MB"),  # 1,048,576 B -> 1,049 kB -> 1 MB
        (400, "419 MB"),  # 419,430,400 B
        (512, "1 GB"),  # 536.9 MB is past 500: "1GB", the contradiction of issue 18 item 9
        (1024, "1 GB"),
        (2048, "2 GB"),
    ],
)
def test_the_page_says_the_limit_as_the_uploader_prints_it(megabytes, shown):
    assert upload_limit_text(megabytes) == shown
