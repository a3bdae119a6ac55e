// memochat web page: chat through the streaming /v1 endpoint, browse and correct the user's memos
// through /api/. Every piece of data is put in the page with textContent (never innerHTML), so a
// memo holding HTML or script shows as text.
"use strict";

const TOKEN_KEY = "memochat-token";
const WHO_KEY = "memochat-who";
const $ = (id) => document.getElementById(id);

const state = { user: null, session: null, busy: false, memos: [], searchTimer: null };
// Per sent message: milliseconds from send to first streamed piece and to the end (read by the benchmark).
window.memochatTimings = [];

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.includes("-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function status(message, isError) {
  const box = $("status");
  box.textContent = message || "";
  box.className = isError ? "error" : "";
}

function headers(json) {
  const h = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

class ApiError extends Error {
  constructor(statusCode, message) {
    super(message);
    this.status = statusCode;
  }
}

async function errorOf(resp) {
  let message = resp.status + " " + resp.statusText;
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON: keep the status line */ }
  if (resp.status === 401) {
    message = "This server needs an API key: enter it above (" + message + ")";
    $("token").focus();
  }
  return new ApiError(resp.status, message);
}

async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

const q = (params) => new URLSearchParams(params).toString();

function when(seconds) {
  if (seconds === null || seconds === undefined) return "before timestamps were kept";
  return new Date(seconds * 1000).toLocaleString();
}

// --------------------------------------------------------------------------- users and sessions

async function loadUsers() {
  const data = await api("GET", "api/users");
  const list = $("user-list");
  list.replaceChildren(...data.users.map((u) => el("option", { value: u.name, text: u.memos + " memos" })));
  return data.users;
}

async function loadSessions(user) {
  const data = await api("GET", "api/sessions?" + q({ user }));
  $("session-list").replaceChildren(...data.sessions.map((s) => el("option", { value: s.session, text: s.turns + " turns" })));
}

async function openSession(user, session) {
  await api("POST", "api/sessions", { user, session });
  const data = await api("GET", "api/lines?" + q({ user, session }));
  state.user = user;
  state.session = session;
  sessionStorage.setItem(WHO_KEY, JSON.stringify({ user, session }));
  $("user").value = user;
  $("session").value = session;
  const messages = $("messages");
  messages.replaceChildren();
  // the session's seed lines (turn 0) are the model's greeting pair, not something the user said
  for (const line of data.lines.slice(data.lines.length - 2 * data.turns)) {
    const isUser = line.startsWith("user: ");
    messages.append(bubble(isUser ? "user" : "bot", line.replace(/^(user|bot): /, "")));
  }
  messages.scrollTop = messages.scrollHeight;
  await Promise.all([loadMemos(), loadUsers(), loadSessions(user)]);
  // last: the title and the enabled inputs say the session is fully shown
  $("chat-title").textContent = "Chat: " + user + " / " + session;
  for (const id of ["input", "send-btn", "search", "export"]) $(id).disabled = false;
}

// --------------------------------------------------------------------------- chat

function bubble(role, text) {
  return el("li", { class: "msg " + role }, el("div", { class: "text", text }));
}

function showTurnMeta(li, info) {
  const meta = el("div", { class: "meta" });
  const used = info.retrieved || [];
  const chips = used.map((m) => {
    const chip = el("button", { type: "button", class: "chip", text: m.topic, title: m.summary });
    chip.addEventListener("click", () => highlight([m.id])); // null for a memo written in the same turn
    return chip;
  });
  meta.append(el("span", { class: "label", text: used.length ? "memos used: " : "no memos used" }), ...chips);
  for (const m of info.written || []) meta.append(el("div", { class: "written", text: "memo written: " + m.topic }));
  li.append(meta);
  li.setAttribute("data-used", used.map((m) => m.id).join(","));
}

function parseEvents(buffer, onData) {
  const events = buffer.split("\n\n");
  const rest = events.pop();
  for (const ev of events) {
    for (const line of ev.split("\n")) if (line.startsWith("data: ")) onData(line.slice(6));
  }
  return rest;
}

async function send(text) {
  const messages = $("messages");
  messages.append(bubble("user", text));
  const li = bubble("bot", "");
  li.classList.add("streaming");
  li.setAttribute("data-state", "streaming");
  messages.append(li);
  messages.scrollTop = messages.scrollHeight;
  const textNode = li.querySelector(".text");
  const n = window.memochatTimings.length;
  const t0 = performance.now();
  performance.mark("memochat-send-" + n);
  let first = null;
  let chunks = 0;
  let info = null;
  let failure = null;
  const resp = await fetch("v1/chat/completions", {
    method: "POST",
    headers: headers(true),
    // user and session in the body, not in headers: header values cannot carry every Unicode name
    body: JSON.stringify({ model: "memochat", user: state.user, metadata: { session: state.session }, stream: true,
      messages: [{ role: "user", content: text }] }),
  });
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const onData = (data) => {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) { failure = chunk.error.message; return; }
    const piece = chunk.choices && chunk.choices[0].delta.content;
    if (piece) {
      if (first === null) {
        first = performance.now();
        performance.mark("memochat-first-token-" + n);
        performance.measure("memochat-ttft-" + n, "memochat-send-" + n, "memochat-first-token-" + n);
      }
      chunks += 1;
      textNode.textContent += piece;
      li.setAttribute("data-chunks", String(chunks));
      messages.scrollTop = messages.scrollHeight;
    }
    if (chunk.memochat) info = chunk.memochat;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), onData);
  }
  parseEvents(buffer + "\n\n", onData);
  window.memochatTimings.push({ ttft_ms: first === null ? null : first - t0, total_ms: performance.now() - t0, chunks });
  li.classList.remove("streaming");
  if (failure) {
    li.classList.add("failed");
    li.setAttribute("data-state", "error");
    li.append(el("div", { class: "meta error", text: failure }));
    return;
  }
  if (info) showTurnMeta(li, info);
  messages.scrollTop = messages.scrollHeight;
  try {
    await loadMemos();
    if (info) highlight((info.retrieved || []).map((m) => m.id));
  } finally {
    li.setAttribute("data-state", "done"); // the reply, its memos and the refreshed memo list are all in place
  }
}

async function onSend(event) {
  event.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text || state.busy || !state.user) return;
  state.busy = true;
  $("send-btn").disabled = true;
  input.value = "";
  try {
    await send(text);
    status("");
  } catch (err) {
    status(err.message, true);
  } finally {
    state.busy = false;
    $("send-btn").disabled = false;
    input.focus();
  }
}

// --------------------------------------------------------------------------- memo browser

async function loadMemos() {
  if (!state.user) return;
  const params = { user: state.user };
  const needle = $("search").value.trim();
  if (needle) params.q = needle;
  const data = await api("GET", "api/memos?" + q(params));
  state.memos = data.memos;
  const shown = data.memos.length < data.total ? data.memos.length + " of " + data.total : String(data.total);
  $("memo-count").textContent = "(" + shown + (needle ? " matching" : "") + ")";
  const list = $("memos");
  list.replaceChildren(...data.memos.map(memoCard));
  if (!data.memos.length) list.append(el("li", { class: "empty", text: needle ? "No memo matches." : "No memos yet." }));
}

function highlight(ids) {
  const wanted = new Set(ids.filter((x) => x !== null).map(String));
  for (const card of document.querySelectorAll("#memos .memo")) {
    card.classList.toggle("used", wanted.has(card.getAttribute("data-id")));
  }
}

function memoCard(m) {
  const card = el("li", { class: "memo", "data-id": String(m.id) });
  const edited = m.updated_at ? " (edited " + when(m.updated_at) + ")" : "";
  const lines = el("ol", { class: "dialogs" }, ...m.dialogs.map((d) => el("li", { text: d })));
  const view = el("div", { class: "view" },
    el("h3", { class: "topic", text: m.topic }),
    el("p", { class: "summary", text: m.summary }),
    el("p", { class: "when", text: m.session + " · turn " + m.turn + " · " + when(m.created_at) + edited }),
    el("details", {}, el("summary", { text: m.dialogs.length + " dialogue line" + (m.dialogs.length === 1 ? "" : "s") }), lines));
  const edit = el("button", { type: "button", class: "edit", text: "Edit" });
  const del = el("button", { type: "button", class: "delete", text: "Delete" });
  edit.addEventListener("click", () => startEdit(card, m));
  del.addEventListener("click", () => confirmDelete(del, m));
  card.append(view, el("div", { class: "actions" }, edit, del));
  return card;
}

function startEdit(card, m) {
  const topic = el("input", { class: "edit-topic", value: m.topic, maxLength: 200, "aria-label": "topic" });
  const summary = el("textarea", { class: "edit-summary", value: m.summary, rows: 3, maxLength: 4000, "aria-label": "summary" });
  const save = el("button", { type: "submit", class: "save", text: "Save" });
  const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
  const form = el("form", { class: "editor" }, topic, summary, el("div", { class: "actions" }, save, cancel));
  cancel.addEventListener("click", () => card.replaceWith(memoCard(m)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    try {
      const updated = await api("PATCH", "api/memos/" + m.id, { topic: topic.value, summary: summary.value });
      card.replaceWith(memoCard(updated));
      status("Memo " + m.id + " saved.");
    } catch (err) {
      status(err.message, true);
      save.disabled = false;
    }
  });
  card.replaceChildren(form);
  topic.focus();
}

function confirmDelete(button, m) {
  if (!button.classList.contains("confirm")) {
    button.classList.add("confirm");
    button.textContent = "Confirm delete";
    setTimeout(() => { button.classList.remove("confirm"); button.textContent = "Delete"; }, 5000);
    return;
  }
  api("DELETE", "api/memos/" + m.id)
    .then(() => { status("Memo " + m.id + " deleted."); return loadMemos(); })
    .catch((err) => status(err.message, true));
}

async function exportMemos() {
  try {
    const resp = await fetch("api/export?" + q({ user: state.user }), { headers: headers(false) });
    if (!resp.ok) throw await errorOf(resp);
    const url = URL.createObjectURL(await resp.blob());
    const link = el("a", { href: url, download: "memochat-" + state.user.replace(/[^A-Za-z0-9._-]/g, "_") + ".jsonl" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    status(err.message, true);
  }
}

// --------------------------------------------------------------------------- start

async function start() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    status("");
    boot();
  });
  $("who").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value.trim();
    const session = $("session").value.trim() || "default";
    if (user) openSession(user, session).then(() => status(""), (err) => status(err.message, true));
  });
  $("user").addEventListener("change", () => {
    const user = $("user").value.trim();
    if (user) loadSessions(user).catch(() => $("session-list").replaceChildren());
  });
  $("send").addEventListener("submit", onSend);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) onSend(event);
  });
  $("search").addEventListener("input", () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => loadMemos().catch((err) => status(err.message, true)), 150);
  });
  $("export").addEventListener("click", exportMemos);
  await boot();
}

async function boot() {
  try {
    await loadUsers();
    const saved = JSON.parse(sessionStorage.getItem(WHO_KEY) || "null");
    if (saved && saved.user) await openSession(saved.user, saved.session || "default");
    document.body.setAttribute("data-ready", "1");
    performance.mark("memochat-ready");
  } catch (err) {
    status(err.message, true);
    document.body.setAttribute("data-ready", "error");
  }
}

start();
