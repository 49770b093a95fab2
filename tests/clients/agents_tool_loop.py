"""The OpenAI Agents SDK running a function-tool loop against chatstream's /v1/responses.

One JSON argument: {base_url, model, prompt, stream}. Prints one JSON line:
{"event": "result", final_output, tool_outputs, responses, error}.
Run with .venv-clients' interpreter (tests/clients/requirements.txt).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def main(options: dict[str, Any]) -> dict[str, Any]:
    set_tracing_disabled(True)  # no trace export: nothing leaves 127.0.0.1
    client = AsyncOpenAI(base_url=options["base_url"], api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=options["model"], openai_client=client),
    )
    result: dict[str, Any] = {"event": "result", "error": None}
    try:
        if options.get("stream"):
            streamed = Runner.run_streamed(agent, options["prompt"])
            deltas = []
            async for event in streamed.stream_events():
                data = getattr(event, "data", None)
                if getattr(data, "type", None) == "response.output_text.delta":
                    deltas.append(data.delta)
            run = streamed
            result["deltas"] = "".join(deltas)
        else:
            run = await Runner.run(agent, options["prompt"])  # type: ignore[assignment]
        result["final_output"] = run.final_output
        result["tool_outputs"] = [
            item.output for item in run.new_items if item.type == "tool_call_output_item"
        ]
        result["responses"] = [response.response_id for response in run.raw_responses]
    except Exception as exc:  # reported to the test, which fails on it
        result["error"] = f"{type(exc).__name__}: {exc}"
    await client.close()
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))) + "\n")
