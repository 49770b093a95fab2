// The HTTP side of the public API: JSON requests with the bearer token, and
// errors as ApiError with the server's machine code.

export class ApiError extends Error {
  constructor(status, code, message, { retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** The error a failed `response` carries: `{"error": {"code", "message"}}`, or its status. */
export async function errorOf(response) {
  const retryAfter = response.headers.get("Retry-After");
  try {
    const { error } = await response.json();
    if (error && typeof error.code === "string") {
      return new ApiError(response.status, error.code, String(error.message ?? ""), { retryAfter });
    }
  } catch {
    // not JSON: fall through to the status
  }
  return new ApiError(response.status, `http_${response.status}`,
    response.statusText || "The request failed.", { retryAfter });
}

export class Api {
  /** `token()` gives the bearer token or ""; `onUnauthorized(error)` hears every 401. */
  constructor({ token, onUnauthorized }) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  /** A fetch of `path` that answered 2xx; otherwise throws ApiError. */
  async request(method, path, { body, headers = {}, signal } = {}) {
    const sent = { ...headers };
    const token = this.token();
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network_error", "The server could not be reached.");
    }
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.status === 204 ? null : response.json();
  }

  models() {
    return this.json("GET", "/api/models");
  }

  sessions(cursor, limit) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return this.json("GET", `/api/sessions?${query}`);
  }

  session(id) {
    return this.json("GET", `/api/sessions/${encodeURIComponent(id)}`);
  }

  messages(sessionId, before, limit) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set("before", before);
    return this.json("GET", `/api/sessions/${encodeURIComponent(sessionId)}/messages?${query}`);
  }

  /** Show the branch through `messageId`; the new branch's newest page. */
  activeBranch(sessionId, messageId, limit) {
    const query = new URLSearchParams({ limit: String(limit) });
    const path = `/api/sessions/${encodeURIComponent(sessionId)}/active-branch?${query}`;
    return this.json("PUT", path, { body: { message_id: messageId } });
  }

  cancel(messageId) {
    return this.json("POST", `/api/runs/${encodeURIComponent(messageId)}/cancel`);
  }
}
