// bardlet chat page: vanilla JS, same-origin only. Streams replies from the OpenAI-compatible
// endpoint (server-sent events read with fetch + ReadableStream). Conversations are kept in
// this browser (localStorage); replies are rendered as Markdown by markdown.js, which builds
// DOM nodes only, never HTML from text.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "bardlet-chats";
const state = { styles: {}, controller: null, store: { current: null, chats: {} } };

// ---------------------------------------------------------------- conversations (localStorage)

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function loadStore() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && saved.chats && typeof saved.chats === "object") state.store = saved;
  } catch (_) { /* a damaged store starts afresh */ }
  if (!state.store.chats[state.store.current]) startChat();
}

function saveStore() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state.store));
  } catch (error) {
    status("could not save the conversation in this browser: " + error.message);
  }
}

function chat() {
  return state.store.chats[state.store.current];
}

function startChat() {
  const id = newId();
  state.store.chats[id] = { id, title: "", messages: [], updated: Date.now() };
  state.store.current = id;
}

function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  const first = conversation.messages.find((m) => m.role === "user");
  return first ? first.content.slice(0, 40) : "New conversation";
}

function renderChatList() {
  const list = $("chat-list");
  list.textContent = "";
  const chats = Object.values(state.store.chats).sort((a, b) => b.updated - a.updated);
  for (const conversation of chats) {
    const item = document.createElement("li");
    const open = button(titleOf(conversation), "open", () => switchTo(conversation.id));
    if (conversation.id === state.store.current) open.setAttribute("aria-current", "true");
    const rename = button("✎", "rename", () => renameChat(conversation.id));
    rename.setAttribute("aria-label", "Rename " + titleOf(conversation));
    const remove = button("✕", "delete", () => deleteChat(conversation.id));
    remove.setAttribute("aria-label", "Delete " + titleOf(conversation));
    item.append(open, rename, remove);
    list.appendChild(item);
  }
}

function switchTo(id) {
  if (state.controller) state.controller.abort();
  state.store.current = id;
  saveStore();
  renderAll();
  closeDrawers();
}

function renameChat(id) {
  const conversation = state.store.chats[id];
  const title = window.prompt("Name this conversation", titleOf(conversation));
  if (title === null) return;
  conversation.title = title.trim();
  saveStore();
  renderChatList();
}

function deleteChat(id) {
  if (!window.confirm("Delete “" + titleOf(state.store.chats[id]) + "”?")) return;
  if (id === state.store.current && state.controller) state.controller.abort();
  delete state.store.chats[id];
  if (!state.store.chats[state.store.current]) {
    const rest = Object.values(state.store.chats).sort((a, b) => b.updated - a.updated);
    if (rest.length) state.store.current = rest[0].id;
    else startChat();
  }
  saveStore();
  renderAll();
}

// ---------------------------------------------------------------- the conversation on the page

function button(text, className, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

function scrollToEnd(element) {
  element.scrollIntoView({ block: "end" });
}

// One message: its bubble, then (for a finished one) a line of numbers and actions.
function addMessage(role, text, index) {
  const bubble = document.createElement("div");
  bubble.className = "msg " + role;
  if (role === "assistant" && index !== undefined) bubble.appendChild(renderMarkdown(text));
  else bubble.textContent = text;
  $("log").appendChild(bubble);
  if (index !== undefined) addMeta(bubble, index);
  scrollToEnd(bubble);
  return bubble;
}

function addMeta(bubble, index) {
  const message = chat().messages[index];
  const meta = document.createElement("div");
  meta.className = "meta " + message.role;
  if (message.stats) {
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = message.stats;
    meta.appendChild(stats);
  }
  const copy = button("Copy", "copy", async () => {
    try {
      await navigator.clipboard.writeText(message.content);
      copy.textContent = "Copied";
    } catch (_) {
      copy.textContent = "Copy failed";
    }
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  });
  meta.appendChild(copy);
  const last = index === chat().messages.length - 1;
  if (message.role === "assistant" && last) meta.appendChild(button("Regenerate", "regenerate", regenerate));
  if (message.role === "user") meta.appendChild(button("Edit", "edit", () => edit(index)));
  bubble.after(meta);
  if (message.sources) addSources(meta, message.sources);
}

// `bardlet serve --docs`: the passages a reply was given, as numbered citations under it.
// Built with textContent only: document text never reaches the page as markup.
function addSources(after, sources) {
  if (!sources || !sources.length) return;
  const list = document.createElement("ol");
  list.className = "sources";
  list.setAttribute("aria-label", "sources");
  for (const source of sources) {
    const item = document.createElement("li");
    item.textContent = source.place;
    item.title = source.text;
    list.appendChild(item);
  }
  after.after(list);
}

function renderLog() {
  $("log").textContent = "";
  chat().messages.forEach((message, index) => addMessage(message.role, message.content, index));
}

function renderAll() {
  renderLog();
  renderChatList();
  status("");
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  for (const element of document.querySelectorAll("#log .meta button.regenerate, #log .meta button.edit")) {
    element.disabled = busy;
  }
}

function status(text) {
  $("status").textContent = text || "";
}

// ---------------------------------------------------------------- talking to the server

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "HTTP " + response.status;
}

// Yields the parsed JSON of each `data:` event until `data: [DONE]`.
async function* serverSentEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function samplingSettings() {
  const settings = {
    temperature: Number($("temperature").value),
    top_k: Math.max(0, Math.floor(Number($("top-k").value) || 0)),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value) || undefined,
  };
  const seed = $("seed").value.trim();
  if (seed !== "") settings.seed = Math.max(0, Math.floor(Number(seed)));
  return settings;
}

// Ask for the assistant's reply to the conversation as it stands (its last message is the
// user's), stream it into a new bubble, and keep it with its numbers.
async function answer() {
  const conversation = chat();
  const bubble = addMessage("assistant streaming", "");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  status("");
  const system = $("system").value.trim();
  const history = conversation.messages.map((m) => ({ role: m.role, content: m.content }));
  const messages = system ? [{ role: "system", content: system }, ...history] : history;
  let reply = "";
  let sources = null;
  let tokens = null;
  let first = null;
  const sent = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: "bardlet",
        messages,
        stream: true,
        stream_options: { include_usage: true },
        ...samplingSettings(),
        truncation: "auto", // a long conversation drops its oldest turns, as the terminal chat does
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of serverSentEvents(response, controller.signal)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        if (first === null) first = performance.now();
        reply += choice.delta.content;
        bubble.textContent = reply; // plain text while it grows; Markdown once it is done
        scrollToEnd(bubble);
      }
      if (choice && choice.finish_reason === "length") status("(reply cut at the token limit)");
      if (choice && choice.finish_reason && choice.delta && choice.delta.sources) sources = choice.delta.sources;
    }
  } catch (error) {
    if (error.name === "AbortError") {
      status("(stopped)");
    } else {
      bubble.classList.add("error");
      bubble.textContent = reply + (reply ? "\n" : "") + "[" + error.message + "]";
      if (!reply && conversation.messages.length) {
        conversation.messages.pop(); // the server refused it: forget the message
        saveStore();
      }
    }
  } finally {
    bubble.classList.remove("streaming");
    state.controller = null;
    if (reply && chat() === conversation) {
      const seconds = (performance.now() - (first === null ? sent : first)) / 1000;
      const message = { role: "assistant", content: reply };
      if (tokens !== null) {
        const rate = tokens > 1 && seconds > 0 ? " · " + ((tokens - 1) / seconds).toFixed(0) + " tokens/s" : "";
        message.stats = tokens + " tokens" + rate;
      }
      if (sources) message.sources = sources;
      conversation.messages.push(message);
      conversation.updated = Date.now();
      saveStore();
      bubble.textContent = "";
      bubble.appendChild(renderMarkdown(reply));
      addMeta(bubble, conversation.messages.length - 1);
      scrollToEnd(bubble);
    } else if (!reply && !bubble.classList.contains("error")) {
      bubble.remove();
    }
    setBusy(false);
  }
}

function send(text) {
  const conversation = chat();
  conversation.messages.push({ role: "user", content: text });
  conversation.updated = Date.now();
  saveStore();
  // The regenerate button belongs to the newest reply only.
  for (const element of document.querySelectorAll("#log .meta button.regenerate")) element.remove();
  addMessage("user", text, conversation.messages.length - 1);
  renderChatList();
  return answer();
}

function regenerate() {
  const messages = chat().messages;
  if (state.controller || !messages.length || messages[messages.length - 1].role !== "assistant") return;
  messages.pop();
  saveStore();
  renderLog();
  answer();
}

// Edit and resend: the message goes back into the box; it and everything after it leave.
function edit(index) {
  if (state.controller) return;
  const conversation = chat();
  $("input").value = conversation.messages[index].content;
  conversation.messages.splice(index);
  saveStore();
  renderLog();
  $("input").focus();
}

// ---------------------------------------------------------------- settings and drawers

function applyStyle(name) {
  const style = state.styles[name];
  if (!style) return;
  $("system").value = style.system || "";
  $("temperature").value = style.temperature;
  $("top-k").value = style.top_k;
  $("top-p").value = style.top_p;
  $("seed").value = style.seed === null || style.seed === undefined ? "" : style.seed;
  $("temperature-value").value = style.temperature;
  $("top-p-value").value = style.top_p;
}

async function loadInfo() {
  try {
    const models = await fetch("/v1/models", { headers: headers() });
    if (models.ok) {
      const data = (await models.json()).data[0];
      $("model").textContent = data.id + " · context " + data.context_length + " tokens";
    }
    const response = await fetch("/v1/styles", { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const select = $("style");
    select.textContent = "";
    for (const style of (await response.json()).data) {
      state.styles[style.id] = style;
      const option = document.createElement("option");
      option.value = style.id;
      option.textContent = style.id;
      select.appendChild(option);
    }
    applyStyle(select.value);
  } catch (error) {
    status("could not load settings: " + error.message);
  }
}

function openDrawer(id) {
  closeDrawers();
  document.body.classList.add("show-" + id);
  $("open-" + id).setAttribute("aria-expanded", "true");
  $("backdrop").hidden = false;
  const first = $(id).querySelector("button, select, input, textarea");
  if (first) first.focus();
}

function closeDrawers() {
  for (const id of ["chats", "settings"]) {
    document.body.classList.remove("show-" + id);
    $("open-" + id).setAttribute("aria-expanded", "false");
  }
  $("backdrop").hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("bardlet-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("bardlet-api-key", $("api-key").value.trim());
    loadInfo();
  });
  loadStore();
  renderAll();
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    startChat();
    saveStore();
    renderAll();
    closeDrawers();
    $("input").focus();
  });
  $("style").addEventListener("change", (event) => applyStyle(event.target.value));
  for (const [id, out] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(id).addEventListener("input", () => { $(out).value = $(id).value; });
  }
  for (const id of ["chats", "settings"]) {
    $("open-" + id).addEventListener("click", () => {
      if (document.body.classList.contains("show-" + id)) closeDrawers();
      else openDrawer(id);
    });
  }
  $("backdrop").addEventListener("click", closeDrawers);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDrawers();
  });
  loadInfo();
});
