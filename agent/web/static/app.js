// The local page: polls /api/status and /api/events every 2 s (README "Web page": why polling),
// shows each camera's MJPEG live view. No framework, no build step: served by the agent itself.
"use strict";

const POLL_MS = 2000;
let token = sessionStorage.getItem("edge-agent-token") || "";

// A token handed over in the address (#token=...) never reaches a server log or a Referer.
function tokenFromAddress() {
  if (!location.hash.startsWith("#token=")) return false;
  token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem("edge-agent-token", token);
  history.replaceState(null, "", location.pathname);
  return true;
}
tokenFromAddress();
window.addEventListener("hashchange", () => {
  if (!tokenFromAddress()) return;
  document.getElementById("login").hidden = true;
  for (const img of document.querySelectorAll("img.live")) img.remove();
  tick();
});

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token) : url;
}

async function getJson(url) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch(url, { headers, cache: "no-store" });
  if (resp.status === 401) {
    askForToken();
    throw new Error("unauthorized");
  }
  if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
  return resp.json();
}

function askForToken() {
  const form = document.getElementById("login");
  if (!form.hidden) return;
  form.hidden = false;
  document.getElementById("login-error").textContent = token ? "that token was not accepted" : "";
  form.onsubmit = (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("edge-agent-token", token);
    form.hidden = true;
    for (const img of document.querySelectorAll("img.live")) img.remove();
    tick();
  };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setPill(id, text, cls) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.className = "pill " + (cls || "");
  node.hidden = false;
}

function fmt(n, digits = 1) {
  return typeof n === "number" ? n.toFixed(digits) : "–";
}

function cameraCard(name) {
  let card = document.getElementById("camera-" + name);
  if (card) return card;
  card = el("article", { class: "camera", id: "camera-" + name },
    el("h2", {}, el("span", {}, name), el("span", { class: "source pill" }, "…")),
    el("div", { class: "view" }),
    el("div", { class: "figures" }));
  document.getElementById("cameras").append(card);
  return card;
}

function liveView(card, name) {
  const view = card.querySelector(".view");
  if (view.querySelector("img.live")) return;
  const img = el("img", { class: "live", alt: "live view of camera " + name, "data-camera": name });
  img.onerror = () => { img.remove(); };  // the agent restarted or the stream ended: next tick opens it again
  img.src = withToken("/api/cameras/" + encodeURIComponent(name) + "/stream.mjpeg");
  view.append(img);
}

function showStatus(s) {
  document.getElementById("device").textContent = s.agent_version ? "v" + s.agent_version : "";
  setPill("state", s.state, s.state === "online" && !(s.stuck || []).length ? "good" : "bad");
  setPill("mqtt", s.mqtt_connected ? "mqtt connected" : "mqtt connecting", s.mqtt_connected ? "good" : "warn");
  const ms = s.model_service || {};
  setPill("model", ms.name ? `model ${ms.name} ${ms.version}` : "no model", ms.name ? "" : "bad");
  const up = ms.update;
  if (up && up.state) setPill("update", `update: ${up.state}${up.version ? " " + up.version : ""}${up.error ? " (" + up.error + ")" : ""}`, up.error ? "bad" : "");
  const m = s.metrics || {};
  document.getElementById("usage").textContent =
    `RSS ${fmt(m.rss_mb, 0)} MB · CPU ${fmt(m.cpu_percent, 0)} % · outbox ${m.outbox_depth ?? "–"}`;
  const sources = s.cameras || {};
  for (const [name, cm] of Object.entries(m.cameras || {})) {
    const card = cameraCard(name);
    liveView(card, name);
    const src = sources[name] || {};
    const state = src.state || cm.source_state;
    const pill = card.querySelector(".source");
    pill.textContent = state + (src.last_error ? ": " + src.last_error : "");
    pill.className = "source pill " + (state === "connected" ? "good" : state === "retrying" ? "bad" : "warn");
    const skipped = cm.frames ? (100 * cm.skipped_no_motion / cm.frames) : 0;
    const figures = card.querySelector(".figures");
    figures.replaceChildren(
      el("span", {}, "fps ", el("b", {}, fmt(cm.fps))),
      el("span", {}, "inference p50 ", el("b", {}, fmt(cm.latency_ms_p50, 0)), " ms"),
      el("span", {}, "frames ", el("b", {}, String(cm.frames ?? "–"))),
      el("span", {}, "model runs ", el("b", {}, String(cm.inferences ?? "–"))),
      el("span", {}, "skipped by motion ", el("b", {}, fmt(skipped, 0)), " %"),
      el("span", {}, "dropped ", el("b", {}, String(cm.dropped ?? "–"))));
  }
  document.getElementById("events-note").textContent = s.events_enabled ? "" : "(events are off in the config)";
}

function showEvents(events) {
  const list = document.getElementById("events");
  const items = events.map((ev) => {
    const id = "event-" + ev.id;
    let li = document.getElementById(id);
    if (!li) {
      li = el("li", { id, "data-event": ev.id }, el("img", { alt: "snapshot of event " + ev.id }), el("div", { class: "text" }));
    }
    const img = li.querySelector("img");
    if (ev.snapshot_url) {
      const src = withToken(ev.snapshot_url + "?v=" + encodeURIComponent(ev.snapshot ? ev.snapshot.ts : ""));
      if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    }
    const start = new Date(ev.start * 1000).toLocaleTimeString();
    const lasted = ev.end ? `${fmt(ev.end - ev.start, 0)} s` : "now";
    li.querySelector(".text").replaceChildren(
      el("div", { class: "what" }, `${ev.label} ${fmt(ev.top_score, 2)}`, " ", el("span", { class: ev.end ? "muted" : "open" }, ev.end ? "ended" : "in view")),
      el("div", {}, `${ev.camera} · ${start} · ${lasted}`),
      el("div", { class: "muted" }, "#" + ev.id.split("-").pop() + (ev.entered_zones && ev.entered_zones.length ? " · zones " + ev.entered_zones.join(", ") : "")));
    return li;
  });
  list.replaceChildren(...items);  // newest first, as the API gives them
}

async function tick() {
  try {
    const [status, events] = await Promise.all([getJson("/api/status"), getJson("/api/events?limit=20")]);
    showStatus(status);
    showEvents(events.events);
  } catch (err) {
    if (err.message !== "unauthorized") setPill("state", "unreachable", "bad");
  }
}

tick();
setInterval(tick, POLL_MS);
