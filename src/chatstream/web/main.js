// The playground: wires the page to the public API (see the README).
//
// Every run this page starts or resumes is a Run (runs.js) fed by one of two
// transports (transports.js); the view draws runs (view.js). A live run is
// kept in sessionStorage with its last seen seq, so a reload resumes it from
// there, and so does coming back to its session.

import { Api } from "./api.js";
import { addControlsWhenKnown, drawBranch, editInPlace } from "./branches.js";
import { PendingRuns, Run, uuid4 } from "./runs.js";
import { TokenForm } from "./token.js";
import { SseTransport, WsTransport } from "./transports.js";
import { AssistantTurn, sessionItem, userTurn } from "./view.js";

const SESSION_PAGE = 20;
const MESSAGE_PAGE = 50;
const TRANSPORT_KEY = "chatstream.transport";
const MODEL_KEY = "chatstream.model";
const HASH = /^#\/sessions\/([0-9a-fA-F-]{36})$/;

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), transport: $("transport"), demo: $("demo-banner"),
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

const tokenForm = new TokenForm(
  { form: $("token-form"), input: $("token"), reason: $("token-reason") },
  () => {
    transports.ws.close(); // the next socket authenticates with the new token
    start();
  },
);
const api = new Api({ token: () => tokenForm.token(), onUnauthorized: (e) => tokenForm.ask(e) });
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
  tokenForm.hide();
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
  showBranch(page, id);
}

/** Draw a page of session `id`'s active branch (its newest messages) as the log. */
function showBranch(page, id) {
  for (const turn of state.turns) turn.detach();
  state.turns = [];
  ui.log.replaceChildren(...drawMessages(page.items));
  state.olderCursor = page.next_cursor;
  ui.olderMessages.hidden = !page.next_cursor;
  // Live runs of this session that the saved messages do not hold yet.
  const saved = new Set(page.items.map((m) => m.id));
  for (const run of state.runs.values()) {
    if (run.sessionId === id && !run.finished && !saved.has(run.messageId)) {
      ui.log.append(addTurn(run).node);
    }
  }
  state.stuck = true;
  scrollToEnd();
  updateControls();
}

/** Show the branch through `messageId` (one of a message's versions). */
async function switchBranch(messageId) {
  const id = state.sessionId;
  if (liveRun() || !id) return;
  const page = await api.activeBranch(id, messageId, MESSAGE_PAGE);
  if (id === state.sessionId) showBranch(page, id);
}

async function loadOlderMessages() {
  const id = state.sessionId;
  const page = await api.messages(id, state.olderCursor, MESSAGE_PAGE);
  if (id !== state.sessionId) return;
  ui.log.prepend(...drawMessages(page.items));
  state.olderCursor = page.next_cursor;
  ui.olderMessages.hidden = !page.next_cursor;
}

// What a message's controls do: versions, Edit and Regenerate (branches.js).
const branchActions = {
  addTurn,
  onSwitch: (id) => guard(switchBranch(id)),
  onEdit: (message, node) => {
    if (liveRun()) return;
    editInPlace(node, message.content, (text) => branchRun(node, "edit", message.id, text));
  },
  onRegenerate: (id, node) => branchRun(node, "regenerate", id, null),
};
const drawMessages = (messages) => drawBranch(messages, branchActions);

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
  pending.save(run, body);
  launch(run, text, () => transport().start(run, body), (error, question, turn) => {
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

/**
 * Edit (`text`: a new user message beside `messageId`) or regenerate (a new answer
 * beside `messageId`), streamed over SSE whatever the transport: the log drops
 * `from` and what follows it, shows the new run, then the session's new branch.
 */
function branchRun(from, action, messageId, text) {
  const sessionId = state.sessionId;
  if (liveRun() || !sessionId) return;
  const body = { stream: true, ...(text === null ? {} : { content: text, client_message_id: uuid4() }) };
  if (ui.model.value) body.model = ui.model.value;
  const run = new Run({ sessionId, clientMessageId: body.client_message_id ?? uuid4() });
  const path = `/api/sessions/${sessionId}/messages/${encodeURIComponent(messageId)}/${action}`;
  for (let node = from, next; node; node = next) {
    next = node.nextElementSibling;
    state.turns = state.turns.filter((turn) => turn.node !== node || (turn.detach(), false));
    node.remove();
  }
  run.listeners.add((_, what) => {
    if (what === "done" && state.sessionId === sessionId) guard(openSession(sessionId));
  });
  launch(run, text, () => transports.sse.start(run, body, path), async (error) => {
    await openSession(sessionId); // refused: nothing changed, show the branch as it is
    showNotice(error);
  });
}

/** Show `run` (after the user's `question`, if any) and follow it as `settle()` says. */
function launch(run, question, settle, onRefused) {
  hideNotice();
  const asked = question === null ? null : userTurn(question);
  if (asked) ui.log.append(asked);
  const turn = addTurn(run);
  ui.log.append(turn.node);
  addControlsWhenKnown(run, asked, question, turn.node, branchActions);
  state.stuck = true;
  scrollToEnd();
  track(run);
  follow(run, settle(), (error) => onRefused(error, asked, turn));
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
  ui.log.classList.toggle("live", live); // no edits, versions or regenerations meanwhile
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

start();
