// The playground: wires the page to the public API (see the README).
//
// Every run this page starts or resumes is a Run (runs.js) fed by one of two
// transports (transports.js); the view draws runs (view.js). A live run is
// kept in sessionStorage with its last seen seq, so a reload resumes it from
// there, and so does coming back to its session.

import { Api } from "./api.js";
import { PendingRuns, Run } from "./runs.js";
import { SseTransport, WsTransport } from "./transports.js";
import { AssistantTurn, sessionItem, userTurn } from "./view.js";

const SESSION_PAGE = 20;
const MESSAGE_PAGE = 50;
const TOKEN_KEY = "chatstream.token"; // sessionStorage: gone when the tab closes
const TRANSPORT_KEY = "chatstream.transport";
const MODEL_KEY = "chatstream.model";
const HASH = /^#\/sessions\/([0-9a-fA-F-]{36})$/;

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), transport: $("transport"), demo: $("demo-banner"),
  tokenForm: $("token-form"), token: $("token"), tokenReason: $("token-reason"),
  sidebar: $("sidebar"), sessionsToggle: $("sessions-toggle"), newChat: $("new-chat"),
  sessionList: $("session-list"), moreSessions: $("more-sessions"),
  olderMessages: $("older-messages"), log: $("log"), notice: $("notice"),
  composer: $("composer"), message: $("message"), send: $("send"), stop: $("stop"),
};

const state = {
  sessionId: null, // the conversation in view; null: a new chat
  sessionCursor: null,
  olderCursor: null,
  opening: 0, // bumps on every switch, so a slow answer for an old one is dropped
  runs: new Map(), // message id -> Run: every run this page has followed
  turns: [], // AssistantTurns in view
  stuck: true, // the log is scrolled to the bottom: keep it there as text comes
};

const api = new Api({
  token: () => sessionStorage.getItem(TOKEN_KEY) ?? "",
  onUnauthorized: askForToken,
});
const pending = new PendingRuns();
const transports = { sse: new SseTransport(api), ws: new WsTransport(api) };
const transport = () => transports[ui.transport.value] ?? transports.sse;

// --- start-up ------------------------------------------------------------------

async function start() {
  let models;
  try {
    models = await api.models();
  } catch (error) {
    if (error.status !== 401) showNotice(error); // 401: the token form is up
    return;
  }
  ui.tokenForm.hidden = true;
  const chosen = localStorage.getItem(MODEL_KEY);
  const selected = models.items.some(({ id }) => id === chosen) ? chosen : models.default;
  ui.model.replaceChildren(...models.items.map(({ id }) => new Option(id, id, false, id === selected)));
  ui.model.disabled = false;
  ui.demo.hidden = !models.demo;
  await guard(loadSessions(true));
  resumePending();
  await openSession(sessionFromHash());
  document.body.dataset.ready = "true";
}

function askForToken(error) {
  const had = api.token() !== "";
  ui.tokenReason.textContent = error.code === "token_expired"
    ? "Your token has expired: paste a new one."
    : had ? `The server refused this token (${error.code}): paste another.`
      : "This server requires a token (CHATSTREAM_AUTH=jwt): paste a JWT.";
  ui.tokenForm.hidden = false;
  ui.token.focus();
}

function resumePending() {
  for (const snapshot of pending.all()) {
    const { messageId, clientMessageId, body } = snapshot;
    const known = [...state.runs.values()].some((r) => (messageId && r.messageId === messageId)
      || (clientMessageId && r.clientMessageId === clientMessageId));
    if (known) continue;
    const run = new Run(snapshot);
    track(run);
    if (messageId) {
      follow(run, transport().resume(run));
    } else if (body) {
      // Sent just before the reload, not started yet: send again, same key, same run.
      run.reopen = true;
      follow(run, transport().start(run, body), () => pending.remove(run));
    }
  }
}

// --- sessions ------------------------------------------------------------------

async function loadSessions(reset) {
  const page = await api.sessions(reset ? null : state.sessionCursor, SESSION_PAGE);
  const items = page.items.map((s) => sessionItem(s, s.id === state.sessionId, (id) => setSession(id)));
  if (reset) ui.sessionList.replaceChildren(...items);
  else ui.sessionList.append(...items);
  state.sessionCursor = page.next_cursor;
  ui.moreSessions.hidden = !page.next_cursor;
}

function sessionFromHash() {
  return HASH.exec(window.location.hash)?.[1] ?? null;
}

/** Show session `id` (null: a new chat), and remember it in the URL's fragment. */
function setSession(id) {
  const hash = id ? `#/sessions/${id}` : "";
  if (window.location.hash !== hash) {
    window.history.pushState(null, "", hash || window.location.pathname);
  }
  return openSession(id);
}

async function openSession(id) {
  const opening = ++state.opening;
  state.sessionId = id;
  for (const turn of state.turns) turn.detach();
  state.turns = [];
  ui.log.replaceChildren();
  ui.olderMessages.hidden = true;
  hideNotice();
  markCurrentSession();
  toggleSidebar(false);
  updateControls();
  if (id === null) {
    ui.message.focus();
    return;
  }
  let page;
  try {
    page = await api.messages(id, null, MESSAGE_PAGE);
  } catch (error) {
    if (opening === state.opening) showNotice(error);
    return;
  }
  if (opening !== state.opening) return;
  ui.log.append(...drawMessages(page.items));
  state.olderCursor = page.next_cursor;
  ui.olderMessages.hidden = !page.next_cursor;
  // Runs of this session that the saved messages do not hold yet: live, or just ended.
  const saved = new Set(page.items.map((m) => m.id));
  for (const run of state.runs.values()) {
    if (run.sessionId === id && !saved.has(run.messageId)) ui.log.append(addTurn(run).node);
  }
  state.stuck = true;
  scrollToEnd();
  updateControls();
}

async function loadOlderMessages() {
  const id = state.sessionId;
  const page = await api.messages(id, state.olderCursor, MESSAGE_PAGE);
  if (id !== state.sessionId) return;
  ui.log.prepend(...drawMessages(page.items));
  state.olderCursor = page.next_cursor;
  ui.olderMessages.hidden = !page.next_cursor;
}

/** Nodes for saved messages: a user turn each; an assistant turn per run (tool rounds included). */
function drawMessages(messages) {
  const nodes = [];
  let answer = [];
  const flush = () => {
    if (answer.length) nodes.push(addTurn(Run.fromMessages(answer)).node);
    answer = [];
  };
  for (const message of messages) {
    if (message.role === "user") {
      flush();
      nodes.push(userTurn(message.content));
    } else if (message.role === "assistant" || message.role === "tool") {
      answer.push(message);
      if (message.role === "assistant" && !message.tool_calls?.length) flush();
    }
  }
  flush();
  return nodes;
}

function markCurrentSession() {
  for (const button of ui.sessionList.querySelectorAll("button.session")) {
    if (button.dataset.sessionId === state.sessionId) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
}

// --- runs ----------------------------------------------------------------------

function send() {
  const text = ui.message.value;
  if (!text.trim() || liveRun()) return;
  const run = new Run({ sessionId: state.sessionId, clientMessageId: uuid4() });
  const body = { message: text, client_message_id: run.clientMessageId };
  if (ui.model.value) body.model = ui.model.value;
  if (state.sessionId) body.session_id = state.sessionId;
  ui.message.value = "";
  hideNotice();
  const question = userTurn(text);
  ui.log.append(question);
  const turn = addTurn(run);
  ui.log.append(turn.node);
  state.stuck = true;
  scrollToEnd();
  track(run);
  pending.save(run, body);
  follow(run, transport().start(run, body), (error) => {
    // Refused before it began (a limit, a bad token): nothing was saved, nothing to show.
    pending.remove(run);
    question.remove();
    turn.node.remove();
    turn.detach();
    state.turns = state.turns.filter((t) => t !== turn);
    if (!ui.message.value) ui.message.value = text;
    showNotice(error);
  });
}

/** Keep `run` in the page's books: storage for reloads, controls, the session list. */
function track(run) {
  if (run.messageId) state.runs.set(run.messageId, run);
  run.listeners.add((_, what) => {
    if (what === "start") {
      state.runs.set(run.messageId, run);
      if (run.stopRequested) cancel(run);
      if (state.sessionId === null && state.turns.some((t) => t.run === run)) {
        // A new chat got its session: the URL and the list learn it.
        state.sessionId = run.sessionId;
        window.history.replaceState(null, "", `#/sessions/${run.sessionId}`);
      } else if (run.reopen && (state.sessionId ?? run.sessionId) === run.sessionId) {
        setSession(run.sessionId); // sent again after a reload: show it where it belongs
      }
      guard(loadSessions(true));
    }
    pending.save(run);
    if (what === "done") {
      updateControls();
      guard(loadSessions(true)); // a new title, a new order
    }
  });
}

async function follow(run, settled, onRefused) {
  updateControls();
  try {
    const outcome = await settled;
    if (outcome === "gone" && !run.finished) {
      // It ended while nobody here was following: the saved messages have its end.
      state.runs.delete(run.messageId);
      pending.remove(run);
      if (state.sessionId === run.sessionId) await openSession(run.sessionId);
    }
  } catch (error) {
    if (!run.messageId && onRefused) {
      onRefused(error);
    } else {
      run.fail(error);
      pending.remove(run);
    }
  } finally {
    updateControls();
  }
}

/** The live run in view, if any: the one Stop and Esc stop. */
function liveRun() {
  return state.turns.find((turn) => !turn.run.finished)?.run ?? null;
}

function stop() {
  const run = liveRun();
  if (run) cancel(run);
}

function cancel(run) {
  if (!run.messageId) {
    run.stopRequested = true; // as soon as the server names it
    return;
  }
  transport().cancel(run).catch(showNotice);
}

function addTurn(run) {
  const turn = new AssistantTurn(run);
  turn.onDraw = scrollToEnd;
  state.turns.push(turn);
  return turn;
}

function updateControls() {
  const live = liveRun() !== null;
  ui.stop.hidden = !live;
  ui.send.disabled = live;
}

// --- small things ----------------------------------------------------------------

function scrollToEnd() {
  if (state.stuck) ui.log.scrollTop = ui.log.scrollHeight;
}

function showNotice(error) {
  ui.notice.textContent = `${error.code ?? "error"}: ${error.message}`;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

async function guard(promise) {
  try {
    return await promise;
  } catch (error) {
    if (error.status !== 401) showNotice(error);
    return undefined;
  }
}

function toggleSidebar(open) {
  ui.sidebar.classList.toggle("open", open);
  ui.sessionsToggle.setAttribute("aria-expanded", String(open));
}

/** A random UUID; crypto.randomUUID needs a secure context, a LAN address is not one. */
function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// --- wiring ----------------------------------------------------------------------

ui.transport.value = localStorage.getItem(TRANSPORT_KEY) === "ws" ? "ws" : "sse";
ui.transport.addEventListener("change", () => localStorage.setItem(TRANSPORT_KEY, ui.transport.value));
ui.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, ui.model.value));
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && liveRun()) {
    event.preventDefault();
    stop();
  } else if (event.key === "Escape") {
    toggleSidebar(false);
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => setSession(null));
ui.moreSessions.addEventListener("click", () => guard(loadSessions(false)));
ui.olderMessages.addEventListener("click", () => guard(loadOlderMessages()));
ui.sessionsToggle.addEventListener("click", () => toggleSidebar(!ui.sidebar.classList.contains("open")));
ui.log.addEventListener("scroll", () => {
  state.stuck = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 40;
});
window.addEventListener("popstate", () => openSession(sessionFromHash()));
ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, ui.token.value.trim());
  ui.token.value = "";
  transports.ws.close(); // the next socket authenticates with the new token
  start();
});

start();
