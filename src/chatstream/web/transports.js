// Two ways to the same runs: SSE over fetch, and the WebSocket. Both offer
//
//   start(run, body)  send a chat; events go to run.apply until `done`
//   resume(run)       follow a live run after run.seq (a reload, a new socket)
//   cancel(run)       stop it (the server saves the partial answer as cancelled)
//
// start and resume settle with "done" once the run has ended, or "gone" when
// the server no longer holds it (ended long ago: the saved messages tell the
// rest); they reject with an ApiError when the server refused the request.
// Dropped connections are retried a few times, after the last seen seq; a
// chat that dropped before its `start` is sent again with the same
// client_message_id, which the server answers with the same run.

import { ApiError } from "./api.js";
import { readEvents } from "./sse.js";

const RETRIES = 4;
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const backoff = (attempt) => Math.min(250 * 2 ** attempt, 4000);
const SSE_HEADERS = { Accept: "text/event-stream" };

export class SseTransport {
  constructor(api) {
    this.api = api;
    this.name = "sse";
  }

  /** `path`: POST /api/chat/stream, or an edit's or a regeneration's (stream: true). */
  async start(run, body, path = "/api/chat/stream") {
    for (let attempt = 0; ; attempt += 1) {
      let response;
      try {
        response = await this.api.request("POST", path, { body, headers: SSE_HEADERS });
      } catch (error) {
        if (error.code !== "network_error" || attempt >= RETRIES) throw error;
        await delay(backoff(attempt));
        continue;
      }
      await this.#read(run, response);
      if (run.finished) return "done";
      if (run.messageId) return this.resume(run); // dropped mid-stream: follow on
      await delay(backoff(attempt));
    }
  }

  async resume(run) {
    let attempt = 0;
    while (!run.finished) {
      const path = `/api/runs/${encodeURIComponent(run.messageId)}/events?after=${run.seq}`;
      let response;
      try {
        response = await this.api.request("GET", path, { headers: SSE_HEADERS });
      } catch (error) {
        if (error.status === 404) return "gone";
        if (error.code !== "network_error" || attempt >= RETRIES) throw error;
        await delay(backoff(attempt++));
        continue;
      }
      if (response.status === 204) return "gone"; // it ended, and nothing came after our seq
      const before = run.seq;
      await this.#read(run, response);
      if (run.seq > before) attempt = 0;
      else if (attempt >= RETRIES) throw new ApiError(0, "network_error", "The stream keeps dropping.");
      else await delay(backoff(attempt++));
    }
    return "done";
  }

  async cancel(run) {
    try {
      await this.api.cancel(run.messageId);
    } catch (error) {
      if (error.status !== 409 && error.status !== 404) throw error; // already over: fine
    }
  }

  async #read(run, response) {
    try {
      await readEvents(response, (event, seq) => run.apply(event, seq));
    } catch {
      // the connection dropped mid-stream; the caller resumes after run.seq
    }
  }
}

export class WsTransport {
  #socket = null;
  #opening = null;
  #followers = new Map(); // request id or message id -> {run, resolve, reject, frame, resuming}
  #reconnects = 0;

  constructor(api, { url = defaultSocketUrl() } = {}) {
    this.api = api;
    this.url = url;
    this.name = "ws";
  }

  start(run, body) {
    const requestId = body.client_message_id;
    const frame = { type: "chat", request_id: requestId, ...body };
    return this.#follow(requestId, run, frame);
  }

  resume(run) {
    return this.#follow(run.messageId, run, null);
  }

  async cancel(run) {
    const socket = await this.#open();
    socket.send(JSON.stringify({ type: "cancel", message_id: run.messageId }));
  }

  close() {
    this.#socket?.close(1000);
  }

  #follow(key, run, frame) {
    return new Promise((resolve, reject) => {
      const follower = { run, resolve, reject, frame, resuming: false };
      this.#followers.set(key, follower);
      this.#open().then((socket) => this.#send(socket, follower), (error) => {
        this.#followers.delete(key);
        reject(error);
      });
    });
  }

  /** The chat frame for a run not started yet, else a resume after its last seen seq. */
  #send(socket, follower) {
    const { run, frame } = follower;
    if (run.messageId) {
      follower.resuming = true;
      socket.send(JSON.stringify({ type: "resume", message_id: run.messageId, after: run.seq }));
    } else {
      socket.send(JSON.stringify(frame));
    }
  }

  #open() {
    if (this.#socket?.readyState === WebSocket.OPEN) return Promise.resolve(this.#socket);
    this.#opening ??= new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      socket.addEventListener("open", () => {
        const token = this.api.token();
        // Browsers cannot set headers on a WebSocket: the token goes in the first frame.
        if (token) socket.send(JSON.stringify({ type: "auth", token }));
        this.#socket = socket;
        this.#opening = null;
        resolve(socket);
      });
      socket.addEventListener("message", (message) => this.#frame(message.data));
      socket.addEventListener("close", (event) => {
        if (this.#opening && this.#socket !== socket) {
          this.#opening = null;
          reject(new ApiError(0, "network_error", "The WebSocket could not be opened."));
          return;
        }
        if (this.#socket === socket) this.#socket = null;
        this.#closed(event);
      });
    });
    return this.#opening;
  }

  #frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "pong") return;
    const byMessage = frame.message_id && this.#followers.get(frame.message_id);
    const key = byMessage ? frame.message_id : frame.request_id;
    const follower = byMessage || (key && this.#followers.get(key));
    if (!follower) return;
    if (frame.type === "error" && frame.seq === undefined) {
      // About a frame we sent, not an event of the run.
      if (frame.request_id && !follower.run.messageId) {
        this.#followers.delete(key);
        follower.reject(new ApiError(0, frame.code, frame.message, { retryAfter: frame.retry_after }));
      } else if (follower.resuming) {
        this.#followers.delete(key);
        follower.resolve("gone"); // the server no longer holds this run
      }
      return;
    }
    follower.resuming = false;
    if (frame.type === "start" && key !== frame.message_id) {
      this.#followers.delete(key);
      this.#followers.set(frame.message_id, follower);
    }
    follower.run.apply(frame, frame.seq);
    if (frame.type === "done") {
      this.#followers.delete(frame.message_id);
      this.#reconnects = 0;
      follower.resolve("done");
    }
  }

  async #closed(event) {
    if (this.#followers.size === 0) return;
    const followers = [...this.#followers.entries()];
    // 1008 is also "you stopped reading": only a failed auth is worth giving up for.
    const refused = event.code === 1008 && /auth/i.test(event.reason);
    if (refused || this.#reconnects >= RETRIES) {
      const error = refused
        ? new ApiError(401, "unauthorized", "The server refused this token on the WebSocket.")
        : new ApiError(0, "network_error", "The WebSocket keeps closing.");
      if (refused) this.api.onUnauthorized(error);
      this.#followers.clear();
      for (const [, follower] of followers) follower.reject(error);
      return;
    }
    await delay(backoff(this.#reconnects++));
    try {
      const socket = await this.#open();
      for (const [, follower] of followers) this.#send(socket, follower);
    } catch {
      this.#closed(event);
    }
  }
}

function defaultSocketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/chat`;
}
