"use strict";
// One EventSource, two channels: the room and the user's own channel.
const { room, user } = window.CHAT;
const ROOM = "room:" + room, ME = "user:" + user;
const SHOW = 200;
const log = document.getElementById("log");
const mentions = document.getElementById("mentions");
const stateEl = document.getElementById("state");
const form = document.getElementById("send");
const errorEl = document.getElementById("error");

let messages = new Map();   // Spillway id -> message
let duringResync = null;    // messages that arrive while the history loads
let lastId = null;          // newest id seen on either channel (ids are global)
let es = null;

function cmpId(a, b) {      // ids are "<ms>-<seq>"
  const [am, as] = a.split("-").map(Number), [bm, bs] = b.split("-").map(Number);
  return am - bm || (as || 0) - (bs || 0);
}
function seen(id) { if (id && (!lastId || cmpId(id, lastId) > 0)) lastId = id; }
function setState(name, text) { stateEl.className = name; stateEl.textContent = text || name; }
function showError(err) { errorEl.textContent = err.message || String(err); }

function render() {
  const ids = [...messages.keys()].sort(cmpId).slice(-SHOW);
  messages = new Map(ids.map((id) => [id, messages.get(id)]));
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.replaceChildren(...ids.map((id) => {
    const m = messages.get(id), li = document.createElement("li");
    const u = document.createElement("span"); u.className = "user"; u.textContent = m.user;
    const t = document.createElement("span"); t.className = "text"; t.textContent = m.text;
    const time = document.createElement("time"); time.dateTime = m.at;
    time.textContent = new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    li.append(time, u, t);
    return li;
  }));
  if (!ids.length) log.innerHTML = '<li class="empty">No messages yet.</li>';
  if (atBottom) log.scrollTop = log.scrollHeight;
}

async function loadHistory() {
  duringResync = new Map();
  try {
    const res = await fetch(`/rooms/${room}/history`, { cache: "no-store" });
    if (!res.ok) throw new Error("history: " + res.status);
    const h = await res.json();
    messages = new Map(h.messages.map((m) => [m.id, m]));
    for (const [id, m] of duringResync) messages.set(id, m);
    seen(h.last_id);
    render();
    return h.last_id;
  } finally {
    duringResync = null;
  }
}

function connect(cursor) {
  const q = new URLSearchParams([["channel", ROOM], ["channel", ME]]);
  if (cursor) q.set("lastEventId", cursor);
  es = new EventSource("/stream?" + q);
  let opened = false;
  es.addEventListener("open", () => {
    setState("live");
    if (!cursor && !opened) loadHistory().catch(showError);
    opened = true;
  });
  es.addEventListener("message", (e) => {       // on room:<room>
    const m = JSON.parse(e.data);
    m.id = e.lastEventId;
    messages.set(m.id, m);
    if (duringResync) duringResync.set(m.id, m);
    seen(m.id);
    render();
  });
  es.addEventListener("mention", (e) => {       // on user:<me>
    seen(e.lastEventId);
    const m = JSON.parse(e.data);
    const li = document.createElement("li");
    const a = document.createElement("a"); a.href = "/rooms/" + m.room; a.textContent = "#" + m.room;
    li.append(`@${m.from} mentioned you in `, a, `: ${m.text}`);
    mentions.prepend(li);
    while (mentions.children.length > 3) mentions.lastChild.remove();
  });
  es.addEventListener("reset", async (e) => {
    seen(e.lastEventId);
    const { channels } = JSON.parse(e.data);
    if (channels.includes(ME)) {
      const li = document.createElement("li");
      li.textContent = "Some mentions may have been missed while you were away.";
      mentions.prepend(li);
    }
    if (!channels.includes(ROOM)) return;
    setState("resyncing");
    try { await loadHistory(); setState("live"); } catch (err) { showError(err); }
  });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CONNECTING) {
      setState("reconnecting", "reconnecting…");
    } else {   // an error status (403 after the session expired, 503...): retry ourselves
      setState("closed", "disconnected, retrying in 5 s");
      setTimeout(() => connect(lastId), 5000);
    }
  });
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  errorEl.textContent = "";
  try {
    const res = await fetch(`/rooms/${room}/messages`, { method: "POST", body: new URLSearchParams(new FormData(form)) });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error || "send: " + res.status);
    form.text.value = "";
  } catch (err) {
    showError(err);
  }
});

document.getElementById("join").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = e.target.room.value.trim().toLowerCase();
  if (/^[a-z0-9_-]{1,24}$/.test(name)) location.href = "/rooms/" + name;
});

loadHistory().then(connect).catch((err) => { showError(err); connect(null); });
