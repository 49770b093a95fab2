"""instructor's structured output against chatstream's /v1/chat/completions.

One JSON argument: {base_url, model, prompt, mode}. Prints one JSON line:
{"event": "result", person, error}. Run with .venv-clients' interpreter.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import instructor
from openai import OpenAI
from pydantic import BaseModel


class Person(BaseModel):
    name: str
    age: int


def main(options: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"event": "result", "person": None, "error": None}
    client = instructor.from_openai(
        OpenAI(base_url=options["base_url"], api_key="unused", max_retries=0),
        mode=instructor.Mode[options["mode"]],
    )
    try:
        person = client.chat.completions.create(
            model=options["model"],
            response_model=Person,
            max_retries=0,
            messages=[{"role": "user", "content": options["prompt"]}],
        )
        result["person"] = person.model_dump()
    except Exception as exc:  # reported to the test, which fails on it
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(json.loads(sys.argv[1]))) + "\n")
