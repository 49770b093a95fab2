"""The branch endpoints and fields are described where clients look: `/openapi.json`
(what `/docs` shows) and the README."""

from __future__ import annotations

import httpx

from tests.support.readme import README

BRANCH_PATHS = {
    "/api/sessions/{session_id}/messages/{message_id}/edit": "post",
    "/api/sessions/{session_id}/messages/{message_id}/regenerate": "post",
    "/api/sessions/{session_id}/active-branch": "put",
}
BRANCH_FIELDS = ("parent_id", "sibling_ids", "sibling_index", "sibling_count")
ERROR_CODES = ("run_in_progress", "not_a_user_message", "nothing_to_regenerate", "not_found")


def test_openapi_describes_every_branch_endpoint_field_and_error(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    described = ""
    for path, method in BRANCH_PATHS.items():
        operation = paths[path][method]
        assert operation["summary"] and operation.get("description"), path
        assert {"200", "404", "422"} <= set(operation["responses"]), path
        described += str(operation)
    for run_path in list(BRANCH_PATHS)[:2]:
        content = paths[run_path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
    for code in ERROR_CODES:
        assert f"`{code}`" in described, code

    components = schema["components"]["schemas"]
    listed = components["BranchMessageOut"]["properties"]
    for field in BRANCH_FIELDS:
        assert listed[field].get("description"), field
    assert "parent_id" in components["MessageOut"]["properties"]
    page = paths["/api/sessions/{session_id}/messages"]["get"]
    assert "active branch" in page["summary"] and "sibling_ids" in page["description"]
    edit = components["EditRequest"]["properties"]
    assert {"content", "stream", "if_busy", "client_message_id"} <= set(edit)
    assert "messageId" in components["UIChatRequest"]["properties"]


def test_the_readme_describes_them_too() -> None:
    text = README.read_text()
    for path in BRANCH_PATHS:
        shown = path.replace("{session_id}", "{id}")
        assert shown in text, shown
    for word in (*BRANCH_FIELDS, *ERROR_CODES, "sendMessage({text, messageId})", "regenerate()"):
        assert word in text, word
