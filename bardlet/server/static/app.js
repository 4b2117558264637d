// bardlet chat page: vanilla JS, same-origin only. Streams replies from the
// OpenAI-compatible endpoint (server-sent events read with fetch + ReadableStream).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], styles: {}, controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// `bardlet serve --docs`: the passages a reply was given, as numbered citations under it.
// Built with textContent only: document text never reaches the page as markup.
function addSources(bubble, sources) {
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
  bubble.after(list);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function status(text) {
  $("status").textContent = text || "";
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

async function send(text) {
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant streaming", "");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  status("");
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.messages] : state.messages;
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: "bardlet",
        messages,
        stream: true,
        temperature: Number($("temperature").value),
        top_p: Number($("top-p").value),
        max_tokens: Number($("max-tokens").value) || undefined,
        truncation: "auto", // a long conversation drops its oldest turns, as the terminal chat does
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of serverSentEvents(response, controller.signal)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        bubble.textContent = reply;
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice && choice.finish_reason === "length") status("(reply cut at the token limit)");
      if (choice && choice.finish_reason && choice.delta) addSources(bubble, choice.delta.sources);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      status("(stopped)");
    } else {
      bubble.classList.add("error");
      bubble.textContent = reply + (reply ? "\n" : "") + "[" + error.message + "]";
      if (!reply) state.messages.pop(); // the server refused it: forget the message
    }
  } finally {
    bubble.classList.remove("streaming");
    if (reply) state.messages.push({ role: "assistant", content: reply });
    state.controller = null;
    setBusy(false);
  }
}

function applyStyle(name) {
  const style = state.styles[name];
  if (!style) return;
  $("system").value = style.system || "";
  $("temperature").value = style.temperature;
  $("top-p").value = style.top_p;
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

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("bardlet-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("bardlet-api-key", $("api-key").value.trim());
    loadInfo();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.messages = [];
    $("log").textContent = "";
    status("");
  });
  $("style").addEventListener("change", (event) => applyStyle(event.target.value));
  for (const [id, out] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(id).addEventListener("input", () => { $(out).value = $(id).value; });
  }
  loadInfo();
});
