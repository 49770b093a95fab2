// Branches in the page: a saved branch (GET …/messages, PUT …/active-branch)
// drawn with each message's versions (`< 2/3 >`, its sibling_ids), an Edit
// button on the user's messages and Regenerate on answers. Nothing here talks
// to the server: main.js gets the actions as callbacks.

import { Run } from "./runs.js";
import { userTurn } from "./view.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(text, className, onClick, label) {
  const node = element("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

/**
 * Nodes for a saved branch, oldest first: a user turn per user message, an
 * assistant turn per run (its tool rounds included), each with its controls.
 * `actions`: addTurn(run) → AssistantTurn, onSwitch(messageId),
 * onEdit(message, node), onRegenerate(messageId, node).
 */
export function drawBranch(messages, actions) {
  const nodes = [];
  let answer = [];
  const flush = () => {
    if (!answer.length) return;
    const turn = actions.addTurn(Run.fromMessages(answer));
    // The run's first row is the one with versions: the answers to the same question.
    addAnswerControls(turn.node, answer[0], answer.at(-1).id, actions);
    nodes.push(turn.node);
    answer = [];
  };
  for (const message of messages) {
    if (message.role === "user") {
      flush();
      const turn = userTurn(message.content);
      addUserControls(turn, message, actions);
      nodes.push(turn);
    } else if (message.role === "assistant" || message.role === "tool") {
      answer.push(message);
      if (message.role === "assistant" && !message.tool_calls?.length) flush();
    }
  }
  flush();
  return nodes;
}

/**
 * The controls of a turn the page drew as it streamed: Edit once the server
 * named the user's message (`start`), Regenerate once the answer ended. A new
 * message and its answer have no other versions yet.
 */
export function addControlsWhenKnown(run, asked, question, answer, actions) {
  run.listeners.add((_, what) => {
    if (what === "start" && asked && run.userMessageId) {
      addUserControls(asked, { id: run.userMessageId, content: question }, actions);
    } else if (what === "done" && run.messageId) {
      addAnswerControls(answer, {}, run.messageId, actions);
    }
  });
}

function addUserControls(turn, message, actions) {
  turn.dataset.messageId = message.id;
  // (Labels that say "message" would be found by the composer's label, "Message".)
  const edit = button("Edit", "link", () => actions.onEdit(message, turn));
  replaceControls(turn, controls(message, edit, actions.onSwitch));
}

function addAnswerControls(node, first, answerId, actions) {
  const again = button("Regenerate", "link", () => actions.onRegenerate(answerId, node));
  replaceControls(node, controls(first, again, actions.onSwitch));
}

function replaceControls(turn, bar) {
  const drawn = [...turn.children].find((child) => child.classList.contains("turn-controls"));
  if (drawn) drawn.replaceWith(bar);
  else turn.append(bar);
}

/** A message's action button, and `‹ 2/3 ›` when it has other versions. */
function controls(message, action, onSwitch) {
  const bar = element("div", "turn-controls");
  bar.append(action);
  const count = message.sibling_count ?? 1;
  if (count < 2) return bar;
  const index = message.sibling_index;
  const versions = element("div", "versions");
  versions.setAttribute("role", "group");
  versions.setAttribute("aria-label", "Versions");
  const go = (to) => () => onSwitch(message.sibling_ids[to]);
  const previous = button("‹", "link", go(index - 1), "Previous version");
  const next = button("›", "link", go(index + 1), "Next version");
  previous.disabled = index === 0;
  next.disabled = index === count - 1;
  const place = element("span", "version", `${index + 1}/${count}`);
  place.setAttribute("aria-label", `Version ${index + 1} of ${count}`);
  versions.append(previous, place, next);
  bar.append(versions);
  return bar;
}

/**
 * Edit a user turn in place: its bubble becomes a text box with Send edit and
 * Cancel. `onSend(text)` is called with the new text; Cancel (or Esc) puts
 * the bubble back.
 */
export function editInPlace(turn, text, onSend) {
  const bubble = turn.querySelector(".bubble");
  const bar = turn.querySelector(".turn-controls");
  if (!bubble || turn.querySelector("form.edit")) return;
  const form = element("form", "edit");
  const box = element("textarea");
  box.value = text;
  box.rows = Math.min(8, Math.max(2, text.split("\n").length));
  box.setAttribute("aria-label", "New text");
  const send = element("button", "primary", "Send edit");
  send.type = "submit";
  const restore = () => {
    form.replaceWith(bubble);
    if (bar) bar.hidden = false;
  };
  const cancel = button("Cancel", null, restore);
  const actions = element("div", "edit-actions");
  actions.append(cancel, send);
  form.append(box, actions);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!box.value.trim()) return;
    onSend(box.value);
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      restore();
    }
  });
  bubble.replaceWith(form);
  if (bar) bar.hidden = true;
  box.focus();
}
