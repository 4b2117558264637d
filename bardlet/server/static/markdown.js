// A small, safe Markdown renderer for chat replies: paragraphs, headings, lists, block quotes,
// fenced code blocks, inline code, **bold** and *emphasis*. It builds DOM nodes with
// createElement and textContent only, so no text from the model or the user ever reaches the
// page as markup (a "<script>" in a reply stays those characters). Links stay text.
"use strict";

const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*|__[^_\n]+__|\*[^*\s][^*\n]*\*|_[^_\s][^_\n]*_)/;

function appendInline(parent, text) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    let node;
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      node = document.createElement("code");
      node.textContent = part.slice(1, -1);
    } else if (part.length > 4 && (part.startsWith("**") || part.startsWith("__")) && part.endsWith(part.slice(0, 2))) {
      node = document.createElement("strong");
      appendInline(node, part.slice(2, -2));
    } else if (part.length > 2 && (part[0] === "*" || part[0] === "_") && part.endsWith(part[0])) {
      node = document.createElement("em");
      appendInline(node, part.slice(1, -1));
    } else {
      node = document.createTextNode(part);
    }
    parent.appendChild(node);
  }
}

// Lines of a paragraph joined with <br>: a chat reply's line breaks are meant.
function appendLines(parent, lines) {
  lines.forEach((line, i) => {
    if (i) parent.appendChild(document.createElement("br"));
    appendInline(parent, line);
  });
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const FENCE = /^\s*```(.*)$/;

// Render `text` as Markdown into a new DocumentFragment.
function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if ((match = FENCE.exec(line))) {
      const code = [];
      i += 1;
      while (i < lines.length && !FENCE.test(lines[i])) code.push(lines[i++]);
      i += 1; // the closing fence (or the end of an unfinished block)
      const pre = document.createElement("pre");
      const element = document.createElement("code");
      const language = match[1].trim();
      if (/^[\w+-]+$/.test(language)) element.dataset.language = language;
      element.textContent = code.join("\n");
      pre.appendChild(element);
      out.appendChild(pre);
    } else if ((match = HEADING.exec(line))) {
      const heading = document.createElement("h" + Math.min(match[1].length + 2, 6));
      appendInline(heading, match[2]);
      out.appendChild(heading);
      i += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const list = document.createElement(pattern === BULLET ? "ul" : "ol");
      while (i < lines.length && pattern.test(lines[i])) {
        const item = document.createElement("li");
        appendInline(item, pattern.exec(lines[i])[1]);
        list.appendChild(item);
        i += 1;
      }
      out.appendChild(list);
    } else if (/^\s*>/.test(line)) {
      const quote = document.createElement("blockquote");
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      appendLines(quote, quoted);
      out.appendChild(quote);
    } else if (!line.trim()) {
      i += 1;
    } else {
      const paragraph = document.createElement("p");
      const kept = [];
      while (
        i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
        !BULLET.test(lines[i]) && !NUMBERED.test(lines[i]) && !/^\s*>/.test(lines[i])
      ) kept.push(lines[i++]);
      appendLines(paragraph, kept);
      out.appendChild(paragraph);
    }
  }
  return out;
}

window.renderMarkdown = renderMarkdown;
