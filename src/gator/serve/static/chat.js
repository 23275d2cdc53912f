// The chat page: plain JavaScript, no build step. It talks to the same OpenAI-compatible API as any client:
// GET /v1/models for the picker, POST /v1/chat/completions (or /v1/completions in "complete" mode) with
// "stream": true, and reads the server-sent events (`data: {...}` ... `data: [DONE]`) as they arrive.
// Model text is inserted with textContent only, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) { showError("could not list models: " + await errorMessage(response)); return; }
    const list = await response.json();
    const select = $("model");
    const previous = select.value;
    select.replaceChildren();
    for (const m of list.data) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.parent ? `${m.id} (adapter on ${m.parent})` : m.id;
      select.append(option);
    }
    if (previous) select.value = previous;
    showError("");
  } catch (e) {
    showError("could not reach the server: " + e.message);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function requestBody() {
  const common = {
    model: $("model").value,
    stream: true,
    temperature: Number($("temperature").value),
    max_tokens: Math.floor(Number($("max-tokens").value)),
  };
  if ($("mode").value === "chat") return ["/v1/chat/completions", { ...common, messages: state.messages }];
  // A base model continues one document: the conversation so far, as plain text.
  const prompt = state.messages.map((m) => m.content).join("\n");
  return ["/v1/completions", { ...common, prompt }];
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  showError("");
  $("input").value = "";
  state.messages.push({ role: "user", content: text });
  const question = addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const out = bubble.querySelector(".text");
  const [url, body] = requestBody();
  state.controller = new AbortController();
  setBusy(true);
  let reply = "", finish = null, failed = false;
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                         signal: state.controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          const piece = choice.delta ? choice.delta.content : choice.text;
          if (piece) { reply += piece; out.textContent = reply; bubble.scrollIntoView({ block: "end" }); }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else { failed = true; showError(e.message); }
  } finally {
    bubble.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
  if (failed && !reply) {  // nothing came back: take the turn out, so it can be sent again
    bubble.remove();
    question.remove();
    state.messages.pop();
    $("input").value = text;
    return;
  }
  state.messages.push({ role: "assistant", content: reply });
  if (finish) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = finish === "length" ? "(max tokens reached)" : finish === "stopped" ? "(stopped)" : "";
    if (note.textContent) bubble.append(note);
  }
  bubble.dataset.finish = finish || "";
}

$("composer").addEventListener("submit", send);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("messages").replaceChildren();
  showError("");
});
$("api-key").value = localStorage.getItem("gator-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("gator-api-key", $("api-key").value); loadModels(); });
loadModels();
