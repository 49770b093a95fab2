"""OpenTelemetry traces of runs, by the GenAI semantic conventions (optional).

On when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with `pip install chatstream[otel]`;
off, this module is never imported and no listener is registered.

Each run becomes one trace, built when the run has ended (from its
`RunRecord`), with the times the run recorded as it went, so that nothing
is traced on the hot path:

    chat {model}                    the run (INTERNAL): status, usage, conversation
    ├── chat {model}                each upstream call (CLIENT): its model, finish, usage
    ├── execute_tool {tool name}    each tool execution (INTERNAL)
    └── chat {model}                the next round …

Attributes follow the GenAI conventions (`gen_ai.operation.name`,
`gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens`, `gen_ai.response.finish_reasons`,
`gen_ai.conversation.id` = the session id, …); chatstream's own are under
`chatstream.*`. No message content is recorded, and no owner.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from chatstream import __version__
from chatstream.config import Settings
from chatstream.runs.lifecycle import RunRecord, RunStarted, Step

PROVIDER = "openai"  # the API chatstream speaks, whichever server answers it
TOOL_TYPE = "function"

# Attribute names (GenAI semantic conventions).
OPERATION = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CONVERSATION_ID = "gen_ai.conversation.id"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE_ATTRIBUTE = "gen_ai.tool.type"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"


class RunTracer:
    """A run listener (`chatstream.runs.lifecycle`) that turns each ended run into spans."""

    def __init__(self, tracer: trace.Tracer, *, server_url: str | None = None) -> None:
        self._tracer = tracer
        self._server: dict[str, Any] = _server_attributes(server_url)

    def run_started(self, run: RunStarted) -> None:
        pass  # the span is built when the run has ended, with its recorded times

    def chat_rejected(self, code: str) -> None:
        pass  # no run, no span: refusals are counted by the metrics

    def run_finished(self, record: RunRecord) -> None:
        calls = [step for step in record.steps if step.kind == "upstream"]
        answered = next((s for s in reversed(calls) if s.response_model), None)
        attributes: dict[str, Any] = {
            OPERATION: "chat",
            PROVIDER_NAME: PROVIDER,
            REQUEST_MODEL: record.model,
            CONVERSATION_ID: str(record.session_id),
            "chatstream.message_id": str(record.message_id),
            "chatstream.run.status": record.status,
            "chatstream.persisted": record.persisted,
            **self._server,
        }
        if answered is not None:
            attributes[RESPONSE_MODEL] = answered.response_model
            if answered.response_id:
                attributes[RESPONSE_ID] = answered.response_id
        if record.finish_reason is not None:
            attributes[FINISH_REASONS] = [record.finish_reason]
        if record.usage is not None:
            attributes[INPUT_TOKENS] = record.usage["prompt_tokens"]
            attributes[OUTPUT_TOKENS] = record.usage["completion_tokens"]
        if record.metrics["ttft_ms"] is not None:
            attributes["chatstream.ttft_ms"] = record.metrics["ttft_ms"]
        if record.error is not None:
            attributes[ERROR_TYPE] = record.error["code"]

        run = self._tracer.start_span(
            f"chat {record.model}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(record.started_at),
        )
        if record.error is not None:
            run.set_status(Status(StatusCode.ERROR, record.error["message"]))
        parent = trace.set_span_in_context(run)
        for step in record.steps:
            if step.kind == "upstream":
                self._upstream_span(step, record.model, parent)
            else:
                self._tool_span(step, parent)
        run.end(end_time=_ns(record.ended_at))

    def _upstream_span(self, step: Step, model: str, parent: Any) -> None:
        attributes: dict[str, Any] = {
            OPERATION: "chat",
            PROVIDER_NAME: PROVIDER,
            REQUEST_MODEL: model,
            **self._server,
        }
        if step.response_model:
            attributes[RESPONSE_MODEL] = step.response_model
        if step.response_id:
            attributes[RESPONSE_ID] = step.response_id
        if step.finish_reason is not None:
            attributes[FINISH_REASONS] = [step.finish_reason]
        usage = step.usage or {}
        for key, attribute in (
            ("prompt_tokens", INPUT_TOKENS),
            ("completion_tokens", OUTPUT_TOKENS),
        ):
            value = usage.get(key)
            if type(value) is int:
                attributes[attribute] = value
        self._child(f"chat {model}", SpanKind.CLIENT, attributes, step, parent)

    def _tool_span(self, step: Step, parent: Any) -> None:
        attributes: dict[str, Any] = {
            OPERATION: "execute_tool",
            TOOL_NAME: step.name,
            TOOL_CALL_ID: step.call_id,
            TOOL_TYPE_ATTRIBUTE: TOOL_TYPE,
        }
        self._child(f"execute_tool {step.name}", SpanKind.INTERNAL, attributes, step, parent)

    def _child(
        self, name: str, kind: SpanKind, attributes: dict[str, Any], step: Step, parent: Any
    ) -> None:
        if step.error is not None:
            attributes[ERROR_TYPE] = step.error
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            start_time=_ns(step.started_at),
        )
        if step.error is not None and step.error != "cancelled":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=_ns(step.ended_at or step.started_at))


class Tracing:
    """The app's tracer provider (OTLP over HTTP, batched) and its run listener."""

    def __init__(self, provider: TracerProvider, settings: Settings) -> None:
        self.provider = provider
        self.listener = RunTracer(
            provider.get_tracer("chatstream", __version__),
            server_url=None if settings.demo else (settings.openai_base_url or OPENAI_URL),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        assert settings.otel_exporter_otlp_endpoint is not None
        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "chatstream"}))
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=traces_url(settings.otel_exporter_otlp_endpoint))
        # Exports in its own thread, in batches: a run's spans cost the loop a queue append.
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, settings)

    async def aclose(self) -> None:
        """Export what is left (blocking network I/O, so in a thread)."""
        await anyio.to_thread.run_sync(self.provider.shutdown)


OPENAI_URL = "https://api.openai.com/v1"


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP: the base endpoint plus the signal's path (the OTLP exporter spec)."""
    return endpoint.rstrip("/") + "/v1/traces"


def _server_attributes(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    parts = urlsplit(url)
    if not parts.hostname:
        return {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {SERVER_ADDRESS: parts.hostname, SERVER_PORT: port}


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
