"""The status of an answer whose run failed comes from the error classes (errors.py)."""

from __future__ import annotations

import pytest

from chatstream.errors import failed_run_status


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("upstream_error", 502),
        ("upstream_timeout", 504),
        ("upstream_rate_limited", 503),
        ("server_shutdown", 503),
        ("internal", 500),
        ("invalid_request", 500),  # a run that failed is the server's failure, never a 4xx
        ("rate_limited", 500),
        ("no_such_code", 500),
    ],
)
def test_a_failed_runs_status_is_its_error_classs(code: str, status: int) -> None:
    assert failed_run_status(code) == status
