"""The README's code blocks, for tests that run them exactly as shown."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
# The server address the README's examples use; tests put their own in its place.
SHOWN_URL = "http://127.0.0.1:8000"


def readme_block(language: str, containing: str) -> str:
    """The one fenced block of `language` that contains `containing`."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} README {language} blocks contain {containing!r}"
    return str(found[0])
