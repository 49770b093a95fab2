// Safe Markdown: text in, DOM nodes out.
//
// A model's answer is untrusted text. Nothing here parses HTML: every piece
// of the answer becomes a text node, and the only attributes set are a link's
// href (after checking its scheme), a list's start number and a code block's
// language class (after checking its characters). So `<img src=x onerror=…>`
// in an answer is shown as exactly that text. The page's Content-Security-
// Policy (Trusted Types) makes any HTML string sink throw, as a second line.
//
// The subset: paragraphs (single newlines are line breaks, as in chat),
// headings, fenced code, block quotes, lists (nested by indentation), tables,
// rules; inline code, strong, emphasis, strike-through, links and bare URLs.
// Images are shown as links: the page never loads anything from elsewhere.
// It renders a half-streamed answer sensibly (an open fence is code so far).

const MAX_DEPTH = 8;
const MAX_CHARS = 200_000; // beyond this, plain text: rendering must stay cheap
const SEARCH_WINDOW = 4_000; // how far an opening delimiter looks for its closing one
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]{0,30})/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>/;
const LIST_ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:\s+(.*))?$/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const ESCAPABLE = /[\\`*_{}[\]()#+\-.!|~<>"']/;
const BARE_URL = /https?:\/\/[^\s<>"]+/iy;
const AUTOLINK = /<((?:https?:\/\/|mailto:)[^\s<>]+)>/iy;
const LINK_TARGET = /\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+"[^"]*")?\s*\)/y;

/** The Markdown `text` as a DocumentFragment of safe nodes. */
export function renderMarkdown(text, doc = document) {
  const fragment = doc.createDocumentFragment();
  const source = String(text ?? "");
  if (source.length > MAX_CHARS) {
    const pre = doc.createElement("pre");
    pre.textContent = source;
    fragment.append(pre);
    return fragment;
  }
  const lines = source.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  renderBlocks(lines, 0, fragment, doc);
  return fragment;
}

/** Whether `url` may be a link's target: absolute http(s) or mailto, else null. */
export function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return SAFE_PROTOCOLS.has(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

// --- blocks ------------------------------------------------------------------

function isBlank(line) {
  return line.trim() === "";
}

function leadingSpaces(line) {
  return line.length - line.trimStart().length;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)
    || LIST_ITEM.test(line);
}

function renderBlocks(lines, depth, parent, doc) {
  if (depth > MAX_DEPTH) {
    const p = doc.createElement("p");
    p.textContent = lines.join("\n");
    parent.append(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (isBlank(line)) {
      i += 1;
    } else if ((match = FENCE.exec(line))) {
      const fence = match[1];
      const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}\\s*$`);
      const code = [];
      i += 1;
      while (i < lines.length && !closing.test(lines[i])) code.push(lines[i++]);
      i += 1; // the closing fence (or the end: an answer still streaming)
      parent.append(codeBlock(code.join("\n"), match[2], doc));
    } else if ((match = HEADING.exec(line))) {
      const heading = doc.createElement(`h${Math.min(match[1].length + 2, 6)}`);
      renderInline(match[2] ?? "", depth + 1, heading, doc);
      parent.append(heading);
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(doc.createElement("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(lines[i++].replace(/^ {0,3}> ?/, ""));
      }
      const quote = doc.createElement("blockquote");
      renderBlocks(inner, depth + 1, quote, doc);
      parent.append(quote);
    } else if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, depth, parent, doc);
    } else if (i + 1 < lines.length && line.includes("|") && TABLE_DIVIDER.test(lines[i + 1])) {
      i = renderTable(lines, i, depth, parent, doc);
    } else {
      const paragraph = [line];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) {
        paragraph.push(lines[i++]);
      }
      const p = doc.createElement("p");
      renderInline(paragraph.map((l) => l.trim()).join("\n"), depth + 1, p, doc);
      parent.append(p);
    }
  }
}

function codeBlock(code, language, doc) {
  const pre = doc.createElement("pre");
  const element = doc.createElement("code");
  if (language) element.className = `language-${language}`;
  element.textContent = code;
  pre.append(element);
  return pre;
}

function renderList(lines, start, depth, parent, doc) {
  const first = LIST_ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const list = doc.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  while (i < lines.length) {
    const match = LIST_ITEM.exec(lines[i]);
    if (!match || /\d/.test(match[2]) !== ordered) break;
    const indent = match[1].length + match[2].length + 1;
    const content = [match[3] ?? ""];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) {
        let next = i;
        while (next < lines.length && isBlank(lines[next])) next += 1;
        if (next < lines.length && leadingSpaces(lines[next]) >= 2) {
          while (i < next) content.push(lines[i++].trim());
          continue;
        }
        break;
      }
      if (leadingSpaces(line) >= 2) {
        content.push(line.slice(Math.min(indent, leadingSpaces(line))));
      } else if (!startsBlock(line)) {
        content.push(line.trim()); // a lazy continuation of the item's paragraph
      } else {
        break;
      }
      i += 1;
    }
    const item = doc.createElement("li");
    renderBlocks(content, depth + 1, item, doc);
    if (!content.some(isBlank)) {
      // A tight item: its text is not a paragraph (a nested list stays a list).
      for (const p of [...item.children].filter((child) => child.nodeName === "P")) {
        p.replaceWith(...p.childNodes);
      }
    }
    list.append(item);
    while (i < lines.length && isBlank(lines[i])) {
      const next = lines.slice(i).findIndex((l) => !isBlank(l));
      if (next < 0 || !LIST_ITEM.test(lines[i + next])) break;
      i += next; // a blank line between items: still the same list
    }
  }
  parent.append(list);
  return i;
}

function splitRow(line) {
  const cells = [];
  let cell = "";
  const body = line.trim().replace(/^\|/, "").replace(/(?<!\\)\|$/, "");
  for (let i = 0; i < body.length; i += 1) {
    if (body[i] === "\\" && body[i + 1] === "|") {
      cell += "|";
      i += 1;
    } else if (body[i] === "|") {
      cells.push(cell.trim());
      cell = "";
    } else {
      cell += body[i];
    }
  }
  cells.push(cell.trim());
  return cells;
}

function renderTable(lines, start, depth, parent, doc) {
  const header = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((spec) => {
    if (spec.startsWith(":") && spec.endsWith(":")) return "center";
    if (spec.endsWith(":")) return "right";
    return spec.startsWith(":") ? "left" : "";
  });
  const wrapper = doc.createElement("div");
  wrapper.className = "table-scroll"; // wide tables scroll inside, never the page
  const table = doc.createElement("table");
  const head = doc.createElement("thead");
  head.append(tableRow(header, "th", aligns, depth, doc));
  const body = doc.createElement("tbody");
  let i = start + 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) {
    body.append(tableRow(splitRow(lines[i]), "td", aligns, depth, doc));
    i += 1;
  }
  table.append(head, body);
  wrapper.append(table);
  parent.append(wrapper);
  return i;
}

function tableRow(cells, tag, aligns, depth, doc) {
  const row = doc.createElement("tr");
  for (let c = 0; c < aligns.length; c += 1) {
    const cell = doc.createElement(tag);
    if (aligns[c]) cell.className = `align-${aligns[c]}`;
    renderInline(cells[c] ?? "", depth + 1, cell, doc);
    row.append(cell);
  }
  return row;
}

// --- inline ------------------------------------------------------------------

function renderInline(text, depth, parent, doc) {
  if (depth > MAX_DEPTH) {
    parent.append(text);
    return;
  }
  let plain = "";
  const flush = () => {
    if (plain) parent.append(plain); // a string appended is a Text node, never markup
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\n") {
      flush();
      parent.append(doc.createElement("br"));
      i += 1;
      continue;
    }
    if (c === "`") {
      let ticks = 1;
      while (text[i + ticks] === "`") ticks += 1;
      const close = findTicks(text, i + ticks, ticks);
      if (close >= 0) {
        flush();
        const code = doc.createElement("code");
        code.textContent = text.slice(i + ticks, close).replace(/^ (.+) $/s, "$1");
        parent.append(code);
        i = close + ticks;
      } else {
        plain += "`".repeat(ticks);
        i += ticks;
      }
      continue;
    }
    if (c === "*" || c === "_" || c === "~") {
      const span = delimited(text, i);
      if (span) {
        flush();
        const element = doc.createElement(span.tag);
        renderInline(span.inner, depth + 1, element, doc);
        parent.append(element);
        i = span.end;
        continue;
      }
    }
    if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      const link = linkAt(text, c === "!" ? i + 1 : i);
      if (link) {
        flush();
        const url = safeUrl(link.url);
        if (url) {
          parent.append(anchor(url, link.label || link.url, doc));
        } else {
          plain += text.slice(i, link.end); // not a link we follow: shown as written
        }
        i = link.end;
        continue;
      }
    }
    if (c === "<") {
      AUTOLINK.lastIndex = i;
      const match = AUTOLINK.exec(text);
      const url = match && safeUrl(match[1]);
      if (url) {
        flush();
        parent.append(anchor(url, match[1], doc));
        i = AUTOLINK.lastIndex;
        continue;
      }
    }
    if ((c === "h" || c === "H") && (i === 0 || /[\s(*_~]/.test(text[i - 1]))) {
      BARE_URL.lastIndex = i;
      const match = BARE_URL.exec(text);
      if (match) {
        const written = match[0].replace(/[.,;:!?)'"*_~]+$/, "");
        const url = safeUrl(written);
        if (url) {
          flush();
          parent.append(anchor(url, written, doc));
          i += written.length;
          continue;
        }
      }
    }
    plain += c;
    i += 1;
  }
  flush();
}

function findTicks(text, from, ticks) {
  const limit = Math.min(text.length, from + SEARCH_WINDOW);
  for (let i = text.indexOf("`", from); i >= 0 && i < limit; i = text.indexOf("`", i + 1)) {
    let run = 1;
    while (text[i + run] === "`") run += 1;
    if (run === ticks) return i;
    i += run - 1;
  }
  return -1;
}

/** A `**strong**`, `*em*`, `_em_`, `__strong__` or `~~del~~` span opening at `start`. */
function delimited(text, start) {
  const c = text[start];
  const double = text[start + 1] === c;
  if (c === "~" && !double) return null;
  const marker = double ? c + c : c;
  const open = start + marker.length;
  if (open >= text.length || /\s/.test(text[open])) return null;
  if (c === "_" && start > 0 && /[\p{L}\p{N}]/u.test(text[start - 1])) return null; // snake_case
  const limit = Math.min(text.length, open + SEARCH_WINDOW);
  for (let close = text.indexOf(marker, open + 1); close >= 0 && close < limit;
    close = text.indexOf(marker, close + 1)) {
    if (/\s/.test(text[close - 1]) || (!double && text[close - 1] === c)) continue;
    if (!double && text[close + 1] === c) {
      close += 1; // part of a longer run: not our closing delimiter
      continue;
    }
    if (c === "_" && /[\p{L}\p{N}]/u.test(text[close + marker.length] ?? "")) continue;
    const tag = c === "~" ? "del" : double ? "strong" : "em";
    return { tag, inner: text.slice(open, close), end: close + marker.length };
  }
  return null;
}

/** `[label](url)` at `start` (which holds the `[`): its parts and where it ends. */
function linkAt(text, start) {
  let depth = 0;
  const limit = Math.min(text.length, start + SEARCH_WINDOW);
  for (let i = start; i < limit; i += 1) {
    if (text[i] === "\\") {
      i += 1;
    } else if (text[i] === "[") {
      depth += 1;
    } else if (text[i] === "]") {
      depth -= 1;
      if (depth === 0) {
        LINK_TARGET.lastIndex = i + 1;
        const target = LINK_TARGET.exec(text);
        if (!target) return null;
        return { label: text.slice(start + 1, i), url: target[1], end: LINK_TARGET.lastIndex };
      }
    }
  }
  return null;
}

function anchor(url, label, doc) {
  const link = doc.createElement("a");
  link.href = url;
  link.rel = "noopener noreferrer nofollow";
  link.target = "_blank";
  link.textContent = label;
  return link;
}
