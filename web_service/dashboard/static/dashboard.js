// The fxbroker dashboard: plain JavaScript, no library. Everything it shows comes from one
// snapshot the server pushes over server-sent events at most once a second; each snapshot
// replaces the last, so a page left open holds one snapshot and a fixed-size DOM.
"use strict";

const TERMINAL = new Set(["success", "failed", "cancelled"]);
const state = { csrf: "", snapshot: null, events: null, task: null, taskFetchedAt: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function time(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

async function api(path, options = {}) {
  const headers = { "content-type": "application/json" };
  if (options.method === "POST") headers["x-csrf-token"] = state.csrf;
  const reply = await fetch(path, { credentials: "same-origin", headers, ...options });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw Object.assign(new Error(body.message || reply.statusText), { status: reply.status });
  return body;
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function signedOut(message) {
  if (state.events) state.events.close();
  state.events = null;
  state.snapshot = null;
  for (const id of ["nav", "who", "summary"]) show(id, false);
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  show("sign-in", true);
  $("sign-in-error").textContent = message || "";
}

async function start() {
  let me;
  try {
    me = await api("/dashboard/api/me");
  } catch (error) {
    signedOut(error.status === 401 ? "" : error.message);
    return;
  }
  state.csrf = me.csrf;
  $("user").textContent = me.user;
  show("sign-in", false);
  for (const id of ["nav", "who", "summary"]) show(id, true);
  route();
  listen();
}

function listen() {
  if (state.events) state.events.close();
  const events = new EventSource("/dashboard/api/events");
  state.events = events;
  events.onopen = () => $("live").classList.add("on");
  events.onerror = () => {
    $("live").classList.remove("on");
    // The browser retries a dropped stream itself; a refused one (an ended session, a
    // service away) it gives up: start again, which asks for a sign-in when needed.
    if (events.readyState === EventSource.CLOSED && state.events === events) {
      state.events = null;
      setTimeout(start, 2000);
    }
  };
  events.addEventListener("signed-out", () => signedOut("Your session ended."));
  events.onmessage = (message) => {
    state.snapshot = JSON.parse(message.data);
    render();
  };
}

function route() {
  const [, view = "endpoints", id] = location.hash.split("/");
  for (const section of document.querySelectorAll(".view")) section.hidden = true;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.view === view);
  }
  if (view === "task" && id) {
    show("view-task", true);
    loadTask(id);
  } else {
    state.task = null;
    show(`view-${["tasks", "functions"].includes(view) ? view : "endpoints"}`, true);
  }
  render();
}

function render() {
  const snap = state.snapshot;
  if (!snap) return;
  for (const [name, value] of Object.entries(snap.counts)) {
    const node = $(`count-${name}`);
    if (node) node.textContent = value;
  }
  renderEndpoints(snap);
  renderTasks(snap);
  renderFunctions(snap);
  const shown = state.task;
  if (shown) {
    const row = snap.tasks.find((task) => task.task_id === shown.task_id);
    const changed = row && row.state !== shown.state;
    const stale = !row && !TERMINAL.has(shown.state) && Date.now() - state.taskFetchedAt > 2000;
    if (changed || stale) loadTask(shown.task_id);
  }
}

function chart(points) {
  const width = 360, height = 80, ns = "http://www.w3.org/2000/svg";
  const top = Math.max(1, ...points);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-label", "tasks finished per second, last 15 minutes");
  const step = width / Math.max(1, points.length - 1);
  const line = points.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / top) * (height - 4)).toFixed(1)}`);
  const path = document.createElementNS(ns, "polyline");
  path.setAttribute("points", line.join(" "));
  svg.append(path);
  return svg;
}

function renderEndpoints(snap) {
  const cards = snap.endpoints.map((e) => {
    const finished = e.tasks_per_s.reduce((sum, rate) => sum + rate * snap.bucket_s, 0);
    const beat = e.last_heartbeat ? `${Math.max(0, Math.round(snap.now - e.last_heartbeat))} s ago` : "never";
    return el("article", { class: "endpoint", "data-endpoint-id": e.endpoint_id },
      el("h3", {}, e.name, " ", el("span", { class: `badge ${e.online ? "online" : "offline"}` }, e.online ? "online" : "offline")),
      el("dl", {},
        el("dt", {}, "Id"), el("dd", {}, e.endpoint_id),
        el("dt", {}, "Agent"), el("dd", {}, e.agent ? `${e.agent} on ${e.host} (${e.engine}, ${e.version})` : "none"),
        el("dt", {}, "Workers"), el("dd", { class: "workers" }, e.workers !== null ? `${e.running ?? 0} busy of ${e.workers} workers (${e.capacity} slots with async)` : "–"),
        el("dt", {}, "Queued"), el("dd", { class: "queued" }, String(e.queued)),
        el("dt", {}, "Running"), el("dd", { class: "in-flight" }, String(e.in_flight)),
        el("dt", {}, "Finished, 15 min"), el("dd", { class: "finished-window" }, String(Math.round(finished))),
        el("dt", {}, "Last heartbeat"), el("dd", {}, beat)),
      chart(e.tasks_per_s),
      el("p", { class: "chart-label" }, `tasks/s, last 15 min in ${snap.bucket_s} s steps, of your ${snap.sample_tasks} newest tasks · peak ${Math.max(...e.tasks_per_s).toFixed(1)}/s`));
  });
  $("endpoints").replaceChildren(...(cards.length ? cards : [el("p", {}, "No endpoints.")]));
}

function fillOptions(select, pairs) {
  const chosen = select.value;
  const options = [el("option", { value: "" }, "any")];
  for (const [value, label] of pairs) options.push(el("option", { value }, label));
  select.replaceChildren(...options);
  select.value = chosen;
}

function renderTasks(snap) {
  const endpoints = new Map(), functions = new Map();
  for (const e of snap.endpoints) endpoints.set(e.endpoint_id, e.name);
  for (const f of snap.functions) functions.set(f.function_id, f.function_name);
  fillOptions($("filter-endpoint"), endpoints);
  fillOptions($("filter-function"), functions);
  const want = { state: $("filter-state").value, endpoint_id: $("filter-endpoint").value, function_id: $("filter-function").value };
  const rows = snap.tasks
    .filter((t) => Object.entries(want).every(([field, value]) => !value || t[field] === value))
    .map((t) => el("tr", { "data-task-id": t.task_id, "data-state": t.state },
      el("td", {}, el("a", { href: `#/task/${t.task_id}` }, t.task_id.slice(0, 8))),
      el("td", { class: `state ${t.state}` }, t.state),
      el("td", {}, t.function_name || t.function_id),
      el("td", {}, t.endpoint_name || t.endpoint_id),
      el("td", {}, (t.task_group_id || "").slice(0, 8)),
      el("td", {}, time(t.created_at)), el("td", {}, time(t.started_at)),
      el("td", {}, time(t.completed_at)), el("td", {}, duration(t.duration_s))));
  $("tasks").tBodies[0].replaceChildren(...rows);
  const groups = snap.task_groups.map((g) => el("tr", { "data-task-group-id": g.task_group_id },
    el("td", {}, el("code", {}, g.task_group_id)), el("td", {}, time(g.created_at)),
    el("td", {}, String(g.tasks)), el("td", {}, String(g.queued)), el("td", {}, String(g.running)),
    el("td", {}, String(g.finished)), el("td", {}, String(g.failed))));
  $("groups").tBodies[0].replaceChildren(...groups);
}

function renderFunctions(snap) {
  const rows = snap.functions.map((f) => el("tr", { "data-function-id": f.function_id },
    el("td", {}, f.function_name), el("td", {}, el("code", {}, f.function_id)),
    el("td", {}, f.owned ? "you" : f.owner_id),
    el("td", {}, [f.public ? "public" : "", ...(f.shared_with || [])].filter(Boolean).join(", ") || (f.owned ? "private" : "shared with you")),
    el("td", {}, f.allowed_on.map((e) => e.any_function ? `${e.name} (any function)` : e.name).join(", "))));
  $("functions").tBodies[0].replaceChildren(...rows);
}

function preview(result) {
  if (!result) return "";
  const [strategy, ...rest] = result.split("\n");
  const body = rest.join("\n");
  if (strategy === "11") return body.slice(0, 4000);
  return `(serialized, strategy ${strategy}, ${body.length} characters)`;
}

async function loadTask(taskId) {
  state.taskFetchedAt = Date.now();
  let task;
  try {
    task = await api(`/dashboard/api/tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    if (error.status === 401) return signedOut("");
    $("task-id").textContent = taskId;
    $("task-state").textContent = error.message;
    return;
  }
  state.task = task;
  $("task-id").textContent = task.task_id;
  $("task-state").textContent = task.state;
  $("task-state").className = `state ${task.state}`;
  $("task-attempts").textContent = task.attempts;
  $("task-agent").textContent = task.agent || "–";
  $("task-cancel").disabled = TERMINAL.has(task.state);
  $("task-timeline").replaceChildren(
    ...[["submitted", task.created_at], ["started", task.started_at], ["finished", task.completed_at]]
      .filter(([, at]) => at).map(([what, at]) => el("li", {}, `${what} ${time(at)}`)));
  const exception = task.exception;
  $("task-result").textContent = preview(task.result);
  $("task-exception").textContent = exception ? `${exception.type}: ${exception.message}\n\n${exception.traceback}` : "";
  $("task-stdout").textContent = task.stdout || "";
  $("task-stderr").textContent = task.stderr || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/dashboard/sign-in", { method: "POST", body: JSON.stringify({ token: $("token").value }) });
      $("token").value = "";
      await start();
    } catch (error) {
      $("sign-in-error").textContent = error.message;
    }
  });
  $("sign-out").addEventListener("click", async () => {
    await api("/dashboard/sign-out", { method: "POST" }).catch(() => null);
    signedOut("Signed out.");
  });
  $("task-cancel").addEventListener("click", async () => {
    if (!state.task) return;
    try {
      await api(`/dashboard/api/tasks/${encodeURIComponent(state.task.task_id)}/cancel`, { method: "POST" });
    } catch (error) {
      $("task-state").textContent = error.message;
    }
    await loadTask(state.task.task_id);
  });
  for (const id of ["filter-state", "filter-endpoint", "filter-function"]) {
    $(id).addEventListener("change", render);
  }
  window.addEventListener("hashchange", route);
  start();
});
