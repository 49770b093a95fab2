"""`POST /v1/chat/completions`'s body, as far as chatstream reads it (the rest passes through).

Validated where chatstream uses a value (roles, the shape of content parts,
tool calls and tool messages, the token limits) or must refuse one before it
reaches the model; otherwise kept as sent: messages keep keys chatstream does
not read, and the client's own options (`PASSTHROUGH_FIELDS`) go to the model
as given. Any other top-level field answers 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chatstream.api.validators import Text


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: Text = Field(description="A URL, or a data URL (`data:image/png;base64,...`).")


class ImageContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="allow")

    data: Text = Field(description="Base64.")
    format: Text


class AudioContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["input_audio"]
    input_audio: InputAudio


class FileObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    file_data: Text | None = None
    file_id: Text | None = None
    filename: Text | None = None


class FileContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["file"]
    file: FileObject


PART_TAGS = ("text", "image_url", "input_audio", "file")
ContentPart = Annotated[
    TextContentPart | ImageContentPart | AudioContentPart | FileContentPart,
    Field(discriminator="type"),
]


def _content_kind(content: Any) -> str | None:
    if isinstance(content, str):
        return "string"
    return "array" if isinstance(content, list) else None


# Tagged by JSON type, so a problem is reported against the one form sent (never against
# both); the tags are left out of `param` (see `_param_of`).
CONTENT_TAGS = ("string", "array")
MessageContent = Annotated[
    Annotated[Text, Tag("string")] | Annotated[list[ContentPart], Tag("array")],
    Discriminator(
        _content_kind,
        custom_error_type="content_type",
        custom_error_message="should be a string or a list of content parts",
    ),
]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Text
    arguments: Text


class MessageToolCall(BaseModel):
    """A call the model made, as the client sends it back (`assistant.tool_calls[]`)."""

    model_config = ConfigDict(extra="allow")

    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


Role = Literal["system", "developer", "user", "assistant", "tool"]


class CompletionMessage(BaseModel):
    """A message of the conversation, passed on as sent (keys chatstream does not read too)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: MessageContent | None = None
    name: Text | None = None
    tool_calls: list[MessageToolCall] | None = Field(
        default=None, description="On an assistant message: the calls it made."
    )
    tool_call_id: Text | None = Field(
        default=None, description="On a tool message: the call it answers."
    )

    @model_validator(mode="after")
    def _complete(self) -> CompletionMessage:
        if self.role == "tool" and (self.tool_call_id is None or self.content is None):
            raise ValueError("a tool message needs `tool_call_id` and `content`")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs `content`")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(
        default=False, description="Send a last chunk with `usage` (and empty `choices`)."
    )


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Text


class ToolDefinition(BaseModel):
    """One of the client's tools, passed to the model as sent; its calls come back to you."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


# Fields passed to the model as the client sent them (when sent, and not null).
PASSTHROUGH_FIELDS = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stop",
        "seed",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "reasoning_effort",
        "logprobs",
        "top_logprobs",
    }
)


class CompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Any other field (`n` > 1, `audio`, …) answers 400.

    `tools`, `tool_choice`, `parallel_tool_calls`, `response_format`, `stop`,
    `seed`, `top_p`, the penalties, `logit_bias`, `user`, `reasoning_effort`,
    `logprobs` and `top_logprobs` go to the model as sent (its token logprobs
    come back in the choices, when it gives them); the model's calls of your tools come back to you
    (`finish_reason: "tool_calls"`), chatstream never runs them.
    """

    model_config = ConfigDict(extra="forbid")

    model: Text = Field(description="One of `GET /v1/models`.")
    messages: list[CompletionMessage] = Field(
        min_length=1,
        description="The last one is the user's, or the results of your tools (`tool` "
        "messages). Without `X-Chatstream-Session-Id` they are the whole context, sent to "
        "the model as given and kept as a new session. With it, the session's history is "
        "the context and only the new ones are taken: the last user message, or the tool "
        "messages after the stored answer that called them.",
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Capped at CHATSTREAM_MAX_TOKENS; without it (or max_completion_tokens) "
        "the model server's own default applies.",
    )
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Same as max_tokens; wins over it."
    )
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(
        default=None, description="Only 1: chatstream answers with one choice."
    )
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    seed: int | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, int] | None = None
    user: Text | None = None
    reasoning_effort: Text | None = None
    logprobs: bool | None = Field(
        default=None,
        description="The answer's tokens with their log probabilities, in each choice's "
        "`logprobs` (streamed with the text), when the model server gives them.",
    )
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        default=None, description="With `logprobs: true`: the likeliest alternatives per token."
    )

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            # OpenAI's own rule: alternatives are only given with the tokens' logprobs.
            raise ValueError("it needs logprobs: true")
        return value

    def upstream_fields(self, max_tokens_cap: int) -> dict[str, Any]:
        """What goes to the model as sent: the pass-through fields and a capped token limit."""
        fields = self.model_dump(
            include=set(PASSTHROUGH_FIELDS), exclude_unset=True, exclude_none=True, mode="json"
        )
        if self.max_completion_tokens is not None:
            fields["max_completion_tokens"] = min(self.max_completion_tokens, max_tokens_cap)
        elif self.max_tokens is not None:
            fields["max_tokens"] = min(self.max_tokens, max_tokens_cap)
        return fields
