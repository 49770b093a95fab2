"""OpenTelemetry: one trace per run by the GenAI conventions; off, nothing at all."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chatstream.tracing import RunTracer
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, read_stream
from tests.support.wait import wait_until

MODEL = "test-model"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_server(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, exporter: InMemorySpanExporter
) -> AppServer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RunTracer(provider.get_tracer("tests"), server_url=fake.base_url)
    return make_server(listeners=[tracer])


def run_chat(server: AppServer, message: str) -> Stream:
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message}) as answer,
    ):
        assert answer.status_code == 200
        return read_stream(answer)


def trace_of(exporter: InMemorySpanExporter, message_id: str) -> tuple[ReadableSpan, list[Any]]:
    """The run's span (once it has ended) and its children, oldest first."""

    def root() -> ReadableSpan | None:
        return next(
            (
                s
                for s in exporter.get_finished_spans()
                if s.attributes and s.attributes.get("chatstream.message_id") == message_id
            ),
            None,
        )

    run = wait_until(root, what="the run's span")
    assert run.context is not None
    children = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == run.context.span_id
    ]
    return run, sorted(children, key=lambda s: s.start_time or 0)


def test_a_run_with_a_tool_is_one_trace_by_the_genai_conventions(
    traced_server: AppServer, exporter: InMemorySpanExporter, fake: FakeUpstreamThread
) -> None:
    stream = run_chat(traced_server, "[[fake tool=get_current_time first_token_ms=60]] time?")
    done = stream.done
    assert done["status"] == "complete"
    start = stream.events[0].data
    call = stream.of("tool_call")[0].data
    run, children = trace_of(exporter, done["message_id"])

    assert run.name == f"chat {MODEL}"
    assert run.kind == SpanKind.INTERNAL
    assert run.status.status_code == StatusCode.UNSET
    attributes = dict(run.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.response.model"] == MODEL  # as the server reported it
    assert attributes["gen_ai.response.id"] == "chatcmpl-emulated"
    assert attributes["gen_ai.conversation.id"] == start["session_id"]
    assert attributes["gen_ai.usage.input_tokens"] == done["usage"]["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == done["usage"]["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == (done["finish_reason"],)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == fake.port
    assert attributes["chatstream.run.status"] == "complete"
    assert "error.type" not in attributes

    # Upstream call, tool, upstream call: in that order, inside the run, not overlapping.
    assert [(s.name, s.kind) for s in children] == [
        (f"chat {MODEL}", SpanKind.CLIENT),
        ("execute_tool get_current_time", SpanKind.INTERNAL),
        (f"chat {MODEL}", SpanKind.CLIENT),
    ]
    first, tool, second = children
    assert all(s.context and s.context.trace_id == run.context.trace_id for s in children)  # type: ignore[union-attr]
    moments = [run.start_time]
    for span in children:
        moments += [span.start_time, span.end_time]
    moments.append(run.end_time)
    assert moments == sorted(moments), moments
    # Real timings: each call waited for the fake's scripted first token.
    for upstream in (first, second):
        assert (upstream.end_time or 0) - (upstream.start_time or 0) >= 60_000_000
    run_ms = ((run.end_time or 0) - (run.start_time or 0)) / 1e6
    assert run_ms >= done["metrics"]["duration_ms"] - 1

    assert dict(tool.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_current_time",
        "gen_ai.tool.call.id": call["call_id"],
        "gen_ai.tool.type": "function",
    }
    first_attributes = dict(first.attributes or {})
    assert first_attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert first_attributes["gen_ai.response.model"] == MODEL
    second_attributes = dict(second.attributes or {})
    assert second_attributes["gen_ai.response.finish_reasons"] == (done["finish_reason"],)
    # The rounds' usage adds up to the run's.
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
        assert first_attributes[key] + second_attributes[key] == attributes[key]


def test_a_failed_run_and_its_upstream_call_are_marked(
    traced_server: AppServer, exporter: InMemorySpanExporter
) -> None:
    stream = run_chat(traced_server, "[[fake status=500]] fail")
    assert stream.done["status"] == "error"
    run, children = trace_of(exporter, stream.done["message_id"])
    assert run.status.status_code == StatusCode.ERROR
    assert (run.attributes or {})["error.type"] == "upstream_error"
    assert (run.attributes or {})["chatstream.run.status"] == "error"
    [call] = children
    assert call.status.status_code == StatusCode.ERROR
    assert (call.attributes or {})["error.type"] == "upstream_error"
    assert "gen_ai.response.model" not in (call.attributes or {})


def test_no_message_content_and_no_owner_in_spans(
    traced_server: AppServer, exporter: InMemorySpanExporter
) -> None:
    secret_words = "[[fake tokens=3]] my very private question"
    stream = run_chat(traced_server, secret_words)
    run, children = trace_of(exporter, stream.done["message_id"])
    for span in [run, *children]:
        for value in (span.attributes or {}).values():
            assert "private" not in str(value) and "anonymous" not in str(value)


class OtlpCollector:
    """A minimal OTLP/HTTP receiver: keeps every trace export it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.paths.append(self.path)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.requests.append(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    receiver = OtlpCollector()
    yield receiver
    receiver.close()


def test_the_otlp_endpoint_turns_tracing_on(
    make_server: Callable[..., AppServer], collector: OtlpCollector
) -> None:
    server = make_server(otel_exporter_otlp_endpoint=collector.url)
    stream = run_chat(server, "[[fake tokens=4]] hello")
    server.stop()  # the lifespan's end exports what is left
    assert set(collector.paths) == {"/v1/traces"}
    spans = collector.spans()
    runs = [(resource, span) for resource, span in spans if span.name == f"chat {MODEL}"]
    run = next(
        span
        for _, span in runs
        if any(a.value.string_value == stream.done["message_id"] for a in span.attributes)
    )
    assert runs[0][0]["service.name"] == "chatstream"
    assert run.parent_span_id == b""
    assert {a.key: a.value.string_value for a in run.attributes}["gen_ai.conversation.id"] == (
        stream.events[0].data["session_id"]
    )


def test_tracing_off_imports_nothing() -> None:
    code = (
        "import sys\n"
        "from chatstream.app import create_app\n"
        "from chatstream.config import Settings\n"
        "create_app(Settings(openai_api_key='k', database_url='sqlite+aiosqlite:///:memory:'))\n"
        # (The redis client imports opentelemetry.sdk.metrics when it is installed.)
        "loaded = [m for m in sys.modules if m == 'chatstream.tracing'"
        " or m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=_clean_env())


def test_tracing_without_the_sdk_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "from chatstream.app import create_app\n"
        "from chatstream.config import Settings\n"
        "try:\n"
        "    create_app(Settings(openai_api_key='k',"
        " otel_exporter_otlp_endpoint='http://127.0.0.1:1'))\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
    )
    assert "pip install 'chatstream[otel]'" in result.stdout


def _clean_env() -> dict[str, str]:
    import os

    return {
        k: v for k, v in os.environ.items() if not k.startswith(("CHATSTREAM_", "OPENAI_", "OTEL_"))
    }
