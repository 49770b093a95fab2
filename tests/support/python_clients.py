"""Python client scripts (tests/clients/*.py) run with their own virtualenv.

instructor and the OpenAI Agents SDK pin versions of openai, jiter and
websockets that cannot share chatstream's own virtualenv, so `make test`
installs them into `.venv-clients` (tests/clients/requirements.txt), and
their scripts run there as separate processes against a real server, as a
Node client script does. Without it these tests are skipped, or fail under
CHATSTREAM_TEST_REQUIRE_SERVICES=1 (as `.ci/run` sets).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "clients"
PYTHON = ROOT / ".venv-clients" / "bin" / "python"


def run_client(script: str, options: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Run a client script to its end; its result line."""
    if not PYTHON.is_file():
        problem = "the Python client libraries are not installed (make test: .venv-clients)"
        if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{problem}, and this run requires the client tests")
        pytest.skip(problem)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(PYTHON), str(SCRIPTS / script), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
