// Drawing: conversation turns and the session list, from nodes and text only.

import { renderMarkdown } from "./markdown.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function userTurn(text) {
  const turn = element("article", "turn user");
  turn.setAttribute("aria-label", "You");
  turn.append(element("div", "bubble", text)); // plain text: what the user typed, as typed
  return turn;
}

/**
 * An assistant turn that redraws itself from `run` at most once per frame;
 * text parts that did not change are not rendered again.
 */
export class AssistantTurn {
  constructor(run) {
    this.run = run;
    this.node = element("article", "turn assistant");
    this.node.setAttribute("aria-label", "Assistant");
    this.parts = element("div", "bubble");
    this.thinking = element("p", "thinking", "Thinking");
    this.thinking.setAttribute("role", "status");
    this.error = element("p", "run-error");
    this.error.setAttribute("role", "alert");
    this.meta = element("p", "meta");
    this.node.append(this.parts, this.thinking, this.error, this.meta);
    this.drawn = []; // per part: {node, length, result}
    this.frame = null;
    this.onDraw = null; // called after each redraw (the log keeps to its end)
    this.listener = () => this.schedule();
    run.listeners.add(this.listener);
    this.draw();
  }

  detach() {
    this.run.listeners.delete(this.listener);
    if (this.frame !== null) cancelAnimationFrame(this.frame);
  }

  schedule() {
    this.frame ??= requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  draw() {
    const run = this.run;
    if (run.messageId) this.node.dataset.messageId = run.messageId;
    this.node.dataset.status = run.status;
    run.parts.forEach((part, index) => {
      const drawn = this.drawn[index] ?? this.#add(part);
      if (part.kind === "text" && drawn.length !== part.text.length) {
        drawn.node.replaceChildren(renderMarkdown(part.text));
        drawn.length = part.text.length;
      } else if (part.kind === "reasoning") {
        const live = index === run.parts.length - 1 && !run.finished; // still thinking
        if (drawn.length !== part.text.length || drawn.live !== live) {
          drawReasoning(drawn.node, part, live, drawn.live);
          drawn.length = part.text.length;
          drawn.live = live;
        }
      } else if (part.kind === "tool" && drawn.result !== part.result) {
        drawToolCard(drawn.node, part);
        drawn.result = part.result;
      }
    });
    this.thinking.hidden = !run.thinking;
    if (run.thinking) {
      const seconds = run.thinkingMs ? ` ${Math.round(run.thinkingMs / 1000)} s` : "";
      this.thinking.textContent = `Thinking${seconds}`;
    }
    this.error.hidden = !run.error;
    if (run.error) this.error.textContent = `${run.error.code}: ${run.error.message}`;
    this.meta.hidden = !run.finished;
    if (run.finished) this.meta.textContent = describeEnd(run);
    this.onDraw?.();
  }

  #add(part) {
    const node = part.kind === "text" ? element("div", "markdown")
      : element("details", part.kind === "reasoning" ? "reasoning" : "tool-card");
    const drawn = { node, length: -1, result: undefined, live: undefined };
    this.drawn.push(drawn);
    this.parts.append(node);
    return drawn;
  }
}

/**
 * The model's reasoning: a collapsible "Thinking" block, open while the model is
 * still thinking (so it can be read as it streams), left as the reader set it after.
 */
function drawReasoning(block, part, live, wasLive) {
  if (!block.firstChild) {
    block.append(element("summary", null, "Thinking"), element("div", "reasoning-text"));
    block.open = live;
  } else if (wasLive && !live) {
    block.open = false; // the answer has begun: fold the thinking away
  }
  block.lastChild.textContent = part.text; // plain text: the model's notes, not Markdown
}

function drawToolCard(card, part) {
  const summary = element("summary");
  summary.append(element("span", "tool-label", "Tool"), " ", element("code", null, part.name ?? "tool"),
    " ", element("span", "tool-state", part.result === null ? "running…" : "done"));
  const args = element("pre", "tool-args", prettyJson(part.arguments));
  args.setAttribute("aria-label", "Arguments");
  card.replaceChildren(summary, args);
  if (part.result !== null) {
    const result = element("pre", "tool-result", prettyJson(part.result));
    result.setAttribute("aria-label", "Result");
    card.append(result);
  }
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return String(text ?? "");
  }
}

/** "complete · TTFT 120 ms · 48 tok/s · 2.1 s", for a finished run. */
export function describeEnd(run) {
  const pieces = [run.status];
  const metrics = run.metrics ?? {};
  if (metrics.ttft_ms != null) pieces.push(`TTFT ${Math.round(metrics.ttft_ms)} ms`);
  if (metrics.tokens_per_second != null) pieces.push(`${Math.round(metrics.tokens_per_second)} tok/s`);
  if (metrics.duration_ms != null) {
    const ms = metrics.duration_ms;
    pieces.push(ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);
  }
  if (metrics.cached) pieces.push("cached");
  return pieces.join(" · ");
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "short" });

export function sessionItem(session, current, onOpen) {
  const item = element("li");
  const button = element("button", "session");
  button.type = "button";
  button.dataset.sessionId = session.id;
  if (current) button.setAttribute("aria-current", "page");
  button.append(
    element("span", "session-title", session.title || "Untitled chat"),
    element("time", "session-time", timeFormat.format(new Date(session.updated_at))),
  );
  button.querySelector("time").dateTime = session.updated_at;
  button.addEventListener("click", () => onOpen(session.id));
  item.append(button);
  return item;
}
