// One answer as the page knows it: the events of a run folded into parts
// (reasoning, text and tool calls, in order), its last seen seq, and how it ended.
// Persisted answers from GET /api/sessions/{id}/messages become the same
// shape, so one renderer draws both.

export class Run {
  constructor(init = {}) {
    this.messageId = null;
    this.sessionId = null;
    this.clientMessageId = null;
    this.model = null;
    this.seq = 0; // the last event applied: resume after it
    // {kind: "text", text} | {kind: "reasoning", text} | {kind: "tool", callId, name, arguments, result}
    this.parts = [];
    this.status = "running"; // or done.status: complete, cancelled, error, interrupted
    this.error = null; // {code, message}
    this.metrics = null;
    this.thinkingMs = null;
    Object.assign(this, init);
    this.listeners = new Set();
  }

  get finished() {
    return this.status !== "running";
  }

  get text() {
    return this.parts.filter((p) => p.kind === "text").map((p) => p.text).join("");
  }

  /** Nothing to read yet, or the model is busy with a tool's result: show it is working. */
  get thinking() {
    if (this.finished) return false;
    const last = this.parts.at(-1);
    return !last || last.kind === "tool";
  }

  /** Apply one event; events at or before the last seen seq are ignored (replays). */
  apply(event, seq) {
    if (seq !== undefined) {
      if (seq <= this.seq) return;
      this.seq = seq;
    }
    switch (event.type) {
      case "start":
        this.messageId = event.message_id;
        this.userMessageId = event.user_message_id; // the message it answers
        this.sessionId = event.session_id;
        this.model = event.model;
        break;
      case "thinking":
        this.thinkingMs = event.elapsed_ms;
        break;
      case "reasoning": // the model's thinking: a part of its own, never part of the text
      case "delta": {
        const kind = event.type === "delta" ? "text" : "reasoning";
        const last = this.parts.at(-1);
        if (last && last.kind === kind) last.text += event.text;
        else this.parts.push({ kind, text: event.text });
        break;
      }
      case "tool_call":
        this.parts.push({
          kind: "tool", callId: event.call_id, name: event.name, arguments: event.arguments,
          result: null,
        });
        break;
      case "tool_result": {
        const call = this.parts.find((p) => p.kind === "tool" && p.callId === event.call_id);
        if (call) call.result = event.content;
        else this.parts.push({ kind: "tool", callId: event.call_id, name: event.name, arguments: "", result: event.content });
        break;
      }
      case "error":
        this.error = { code: event.code, message: event.message };
        break;
      case "done":
        this.status = event.status;
        this.metrics = event.metrics ?? null;
        break;
      default:
        return; // a newer server's event: nothing to draw
    }
    this.changed(event.type);
  }

  /** The run could not be started or followed: keep what was seen, show why. */
  fail(error) {
    this.error = { code: error.code ?? "internal", message: error.message ?? String(error) };
    this.status = "error";
    this.changed("error");
  }

  changed(what) {
    for (const listener of this.listeners) listener(this, what);
  }

  snapshot() {
    const { messageId, sessionId, clientMessageId, model, seq, parts } = this;
    return { messageId, sessionId, clientMessageId, model, seq, parts };
  }

  /** Persisted rows of one assistant turn (tool rounds included) as a finished Run. */
  static fromMessages(rows) {
    const run = new Run({ status: "complete" });
    for (const row of rows) {
      if (row.role === "assistant") {
        if (row.reasoning) run.apply({ type: "reasoning", text: row.reasoning });
        if (row.content) run.apply({ type: "delta", text: row.content });
        for (const call of row.tool_calls ?? []) {
          const fn = call.function ?? {};
          run.apply({ type: "tool_call", call_id: call.id, name: fn.name, arguments: fn.arguments ?? "" });
        }
        run.messageId = row.id;
        run.sessionId = row.session_id;
        run.model = row.model;
        run.metrics = row.metrics;
        run.status = row.status;
      } else if (row.role === "tool") {
        run.apply({ type: "tool_result", call_id: row.tool_call_id, name: row.name, content: row.content });
      }
    }
    run.listeners.clear();
    return run;
  }
}

/**
 * The runs this tab is following, kept in sessionStorage so that a reload
 * resumes each one after its last seen seq instead of losing it. A snapshot
 * holds the parts drawn so far together with the seq they reach, so the two
 * always agree. A chat sent but not started yet is kept with its request,
 * to send again with the same client_message_id (the server then answers
 * with the run the first one started, if it did). Writes are coalesced (a
 * run may yield hundreds of events a second) and flushed when the page goes.
 */
export class PendingRuns {
  static KEY = "chatstream.pending.v2";
  #dirty = new Set();
  #timer = null;

  constructor(storage = window.sessionStorage, intervalMs = 250) {
    this.storage = storage;
    this.intervalMs = intervalMs;
    window.addEventListener("pagehide", () => this.flush());
  }

  all() {
    return Object.values(this.#read());
  }

  /** Remember `run` as it is now (`body`: its request, until the server names the run). */
  save(run, body) {
    if (body) run.body = body;
    this.#dirty.add(run);
    this.#timer ??= setTimeout(() => this.flush(), this.intervalMs);
  }

  /** Forget `run`: it ended, or the server refused it. */
  remove(run) {
    run.forgotten = true;
    this.save(run);
    this.flush();
  }

  flush() {
    clearTimeout(this.#timer);
    this.#timer = null;
    const dirty = [...this.#dirty];
    this.#dirty.clear();
    const pending = this.#read();
    for (const run of dirty) {
      delete pending[run.clientMessageId];
      delete pending[run.messageId];
      if (run.finished || run.forgotten) continue;
      const snapshot = run.snapshot();
      if (!run.messageId) snapshot.body = run.body;
      pending[run.messageId ?? run.clientMessageId] = snapshot;
    }
    try {
      this.storage.setItem(PendingRuns.KEY, JSON.stringify(pending));
    } catch {
      // storage full or disabled: a reload then shows the saved answer once it ends
    }
  }

  #read() {
    try {
      return JSON.parse(this.storage.getItem(PendingRuns.KEY) ?? "{}");
    } catch {
      return {};
    }
  }
}

/** A random UUID; crypto.randomUUID needs a secure context, a LAN address is not one. */
export function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
