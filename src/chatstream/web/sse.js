// Server-Sent Events over fetch: a small decoder (text in, events out) and a
// reader of a streaming Response. fetch, unlike EventSource, can POST a body
// and send an Authorization header.

/** Decodes an SSE byte stream already turned into text, one chunk at a time. */
export class SseDecoder {
  #buffer = "";
  #id = null;
  #event = "";
  #data = [];

  /** The complete events in `chunk` (and what earlier chunks left over). */
  push(chunk) {
    this.#buffer += chunk;
    const events = [];
    let end;
    while ((end = this.#lineEnd()) >= 0) {
      const line = this.#buffer.slice(0, end);
      const skip = this.#buffer[end] === "\r" && this.#buffer[end + 1] === "\n" ? 2 : 1;
      this.#buffer = this.#buffer.slice(end + skip);
      const event = this.#line(line);
      if (event) events.push(event);
    }
    return events;
  }

  #lineEnd() {
    const match = /[\r\n]/.exec(this.#buffer);
    if (!match) return -1;
    // A lone \r at the very end may be half of \r\n: wait for the next chunk.
    if (this.#buffer[match.index] === "\r" && match.index === this.#buffer.length - 1) return -1;
    return match.index;
  }

  #line(line) {
    if (line === "") {
      if (this.#data.length === 0) {
        this.#event = "";
        return null;
      }
      const event = { id: this.#id, event: this.#event || "message", data: this.#data.join("\n") };
      this.#event = "";
      this.#data = [];
      return event;
    }
    if (line.startsWith(":")) return null; // a comment: keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data.push(value);
    else if (field === "event") this.#event = value;
    else if (field === "id" && !value.includes("\0")) this.#id = value;
    return null;
  }
}

/** Calls `onEvent(data, seq)` for every event of an SSE `response`, until it ends. */
export async function readEvents(response, onEvent) {
  const decoder = new SseDecoder();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const event of decoder.push(value)) {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          continue; // not ours: every chatstream event is one line of JSON
        }
        onEvent(data, event.id === null ? undefined : Number(event.id));
      }
    }
  } finally {
    reader.releaseLock();
  }
}
