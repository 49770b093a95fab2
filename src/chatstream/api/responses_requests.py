"""`POST /v1/responses`'s body, and what it becomes: a chat turn and the model's own options.

The Responses API's request is read as far as chatstream can honour it and
turned into what `/v1/chat/completions` sends the model (one streaming core):

    input (string or items)   messages: `message` items (input_text, output_text,
                              input_image, input_file parts), `function_call` and
                              `function_call_output` items; `reasoning` items are
                              dropped (they cannot be sent on)
    instructions              the system message (a new session's system prompt)
    tools (function)          Chat Completions tools, passed through; their calls
                              come back to you, never run here
    tool_choice, text.format  `tool_choice`, `response_format`
    max_output_tokens         `max_tokens`, capped at CHATSTREAM_MAX_TOKENS
    include: "message.output_text.logprobs", top_logprobs
                              `logprobs: true`, `top_logprobs` (each text delta's
                              `logprobs`, when the model server gives them)

Any other field (other `include` values, `reasoning`, `truncation`, `user`, ...) is
accepted and ignored, as the issue of a client written against OpenAI's
newest API should never be a 400 for an option that cannot apply here.
Function tools, and those of a `namespace` (Codex groups its tools so), go
to the model; hosted tools (`web_search`, `file_search`, ...) cannot run
here and are not offered to it: the answer's `X-Chatstream-Ignored-Tools`
header names them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatstream.api.openai_requests import CompletionMessage
from chatstream.api.validators import Text
from chatstream.errors import InvalidRequest


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Text
    name: Text | None = None
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[dict[str, Any]] | None = None  # a namespace's


def _function(index: int, tool: FunctionTool) -> FunctionTool:
    if tool.name is None:
        raise InvalidRequest(
            "A function tool needs a name.", details=[{"loc": ["body", "tools", index]}]
        )
    return tool


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    name: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: Text | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None


class ResponseRequest(BaseModel):
    """`POST /v1/responses`. Fields not listed are accepted and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: Text = Field(description="One of `GET /v1/models`.")
    input: Text | list[dict[str, Any]] = Field(
        description="A user message's text, or items: messages, `function_call`s and your "
        "`function_call_output`s. With `previous_response_id`, only the new ones."
    )
    instructions: Text | None = Field(
        default=None, description="The system message (a new conversation's system prompt)."
    )
    previous_response_id: Text | None = Field(
        default=None, description="Continue that response's conversation (its session)."
    )
    store: bool = Field(
        default=True,
        description="false: the conversation is deleted once the answer has ended, so it "
        "can be neither retrieved nor continued.",
    )
    stream: bool = False
    background: bool = Field(
        default=False,
        description="Answer at once (status `queued`); the run goes on; GET it, or stream it "
        "with `?stream=true`, from any instance.",
    )
    tools: list[FunctionTool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    metadata: dict[str, Text] | None = None
    include: list[Text] | None = Field(
        default=None,
        description='"message.output_text.logprobs": the text\'s token logprobs; other '
        "values are accepted and ignored.",
    )
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def function_tools(self) -> list[FunctionTool]:
        """The function tools offered, a namespace's flattened (each keeps its own name)."""
        found: list[FunctionTool] = []
        for index, tool in enumerate(self.tools or ()):
            if tool.type == "namespace":
                found += [
                    _function(index, FunctionTool.model_validate(t)) for t in tool.tools or ()
                ]
            elif tool.type == "function":
                found.append(_function(index, tool))
        return found

    def namespaces(self) -> dict[str, str]:
        """A namespaced function's name → its namespace (its calls name it, as OpenAI's do)."""
        return {
            str(inner.get("name")): str(tool.name)
            for tool in self.tools or ()
            if tool.type == "namespace"
            for inner in tool.tools or ()
        }

    def hosted_tools(self) -> list[str]:
        """The types of the hosted tools asked for (`web_search`, ...): none runs here."""
        return [
            tool.type for tool in self.tools or () if tool.type not in ("function", "namespace")
        ]

    def upstream_fields(self, max_tokens_cap: int) -> dict[str, Any]:
        """What goes to the model, in Chat Completions' names."""
        fields: dict[str, Any] = {}
        tools = [_chat_tool(tool) for tool in self.function_tools()]
        if tools:
            fields["tools"] = tools
        # Chat Completions takes these only beside tools (when all were hosted: none).
        if self.tool_choice is not None and tools:
            fields["tool_choice"] = _chat_tool_choice(self.tool_choice)
        if self.parallel_tool_calls is not None and tools:
            fields["parallel_tool_calls"] = self.parallel_tool_calls
        if self.text is not None and self.text.format is not None:
            response_format = _response_format(self.text.format)
            if response_format is not None:
                fields["response_format"] = response_format
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.max_output_tokens is not None:
            fields["max_tokens"] = min(self.max_output_tokens, max_tokens_cap)
        if LOGPROBS_INCLUDE in (self.include or ()):
            fields["logprobs"] = True
            if self.top_logprobs is not None:
                fields["top_logprobs"] = self.top_logprobs
        return fields


LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    for key in ("description", "parameters", "strict"):
        value = getattr(tool, key)
        if value is not None:
            function[key] = value
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.",
        details=[{"loc": ["body", "tool_choice"]}],
    )


def _response_format(text_format: TextFormat) -> dict[str, Any] | None:
    if text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": text_format.name or "response"}
    if text_format.schema_ is not None:
        schema["schema"] = text_format.schema_
    if text_format.strict is not None:
        schema["strict"] = text_format.strict
    if text_format.description is not None:
        schema["description"] = text_format.description
    return {"type": "json_schema", "json_schema": schema}


# --- input items → Chat Completions messages ---------------------------------------------


def _part(part: Any, where: list[Any]) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal")}
    if kind == "input_image":
        image: dict[str, Any] = {"url": part.get("image_url") or part.get("file_id")}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {key: part[key] for key in ("file_data", "file_id", "filename") if key in part}
        return {"type": "file", "file": file}
    raise InvalidRequest(
        f"Content part type '{kind}' is not supported; use input_text, input_image or input_file.",
        details=[{"loc": where}],
    )


def _message(item: dict[str, Any], where: list[Any]) -> dict[str, Any]:
    content = item.get("content")
    if isinstance(content, list):
        parts = [_part(part, [*where, "content", n]) for n, part in enumerate(content)]
        if item.get("role") == "assistant" or all(p["type"] == "text" for p in parts):
            # An assistant's earlier answer (and a text-only message) is plain text.
            content = "".join(str(p.get("text") or "") for p in parts)
        else:
            content = parts
    return {"role": item.get("role"), "content": content}


def chat_messages(request: ResponseRequest) -> list[dict[str, Any]]:
    """The request's input as Chat Completions messages (instructions first)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    for index, item in enumerate(request.input):
        where: list[Any] = ["body", "input", index]
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not last.get("content"):
                last.setdefault("tool_calls", []).append(call)
            elif last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(
                    str(part.get("text") or "") for part in output if isinstance(part, dict)
                )
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
            )
        elif kind == "reasoning":
            continue  # the model's earlier reasoning: nothing a chat model takes back
        else:
            raise InvalidRequest(
                f"Input item type '{kind}' is not supported; send messages, function_call "
                "and function_call_output items.",
                details=[{"loc": where}],
            )
    return messages


def validated(messages: list[dict[str, Any]]) -> list[CompletionMessage]:
    """The messages as `/v1/chat/completions` takes them; a 400 naming the problem if not."""
    out: list[CompletionMessage] = []
    for message in messages:
        try:
            out.append(CompletionMessage.model_validate(message))
        except ValidationError as exc:
            first = exc.errors()[0]
            role = message.get("role") or "input"
            raise InvalidRequest(
                f"A {role} item of the input is not valid: {first['msg']}.",
                details=[{"loc": ["body", "input"]}],
            ) from None
    if not out or out[-1].role not in ("user", "tool"):
        raise InvalidRequest(
            "The input must end with a user message or your function_call_output items: "
            "they are what is answered.",
            details=[{"loc": ["body", "input"]}],
        )
    return out
