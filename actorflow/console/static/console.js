// actorflow console: one page, three screens (overview, runs, a run), talking the
// gateway's websocket protocol (docs/gateway.md) on /ws of this origin. Plain JavaScript,
// no build step; every string from the server goes into the page as text, never as HTML.
"use strict";

const MERMAID = "/static/vendor/mermaid-12.3.0.min.js";
const PAGE = 50;
const DIFF_ROWS = 500;  // changes listed per version at most
const TOKEN_KEY = "actorflow.token";
const RUN_STATES = ["INITIATED", "RUNNING", "PAUSED", "CANCELLED", "COMPLETED",
  "REQUESTED_DATA_DELETED", "DATA_DELETED"];
const STEERING = [
  {op: "pause", label: "Pause", from: ["INITIATED", "RUNNING"]},
  {op: "resume", label: "Resume", from: ["PAUSED"]},
  {op: "cancel", label: "Cancel", from: ["INITIATED", "RUNNING", "PAUSED"], danger: true},
  {op: "delete_data", label: "Delete data", from: ["COMPLETED", "CANCELLED"], danger: true},
];

// -- small DOM helpers ----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector, root = document) => root.querySelector(selector);

function stateBadge(runState) {
  return el("span", {class: `state state-${runState}`, text: runState});
}

function shortId(runId) {
  return runId.length > 12 ? runId.slice(0, 8) + "…" : runId;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function formatAge(iso, now = Date.now()) {
  let seconds = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

function formatDue(iso, now = Date.now()) {
  const ms = new Date(iso).getTime() - now;
  return ms <= 0 ? "due now" : `in ${formatAge(new Date(now - ms).toISOString(), now)}`;
}

let toastTimer = null;
function toast(message, bad = false) {
  const box = $("#toast");
  box.textContent = message;
  box.className = bad ? "toast bad" : "toast";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 3000);
}

// -- the gateway connection -----------------------------------------------------------------

class GatewayError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

class Gateway {
  constructor(token) {
    this.token = token;
    this.nextId = 1;
    this.waiting = new Map();
    this.subscriptions = new Map();
    this.socket = null;
    this.opened = null;
    this.closedByUs = false;
    this.onStatus = () => {};
    this.onReconnect = () => {};
    this.retryDelay = 500;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : "";
    return `${scheme}//${location.host}/ws${query}`;
  }

  connect() {
    this.opened = new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url());
      this.socket = socket;
      this.onStatus("connecting…");
      socket.onopen = () => {
        this.retryDelay = 500;
        this.onStatus("live");
        resolve();
      };
      socket.onmessage = (message) => this.receive(message.data);
      socket.onclose = () => {
        const failed = new GatewayError("connection_closed", "the connection to the console ended");
        for (const {reject: fail} of this.waiting.values()) fail(failed);
        this.waiting.clear();
        for (const sub of this.subscriptions.values()) sub.onEnd("closed");
        this.subscriptions.clear();
        reject(failed);
        if (this.closedByUs) return;
        this.onStatus("disconnected, reconnecting…");
        setTimeout(() => {
          this.connect();
          this.opened.then(() => this.onReconnect(), () => {});
        }, this.retryDelay);
        this.retryDelay = Math.min(this.retryDelay * 2, 10000);
      };
    });
    this.opened.catch(() => {});
    return this.opened;
  }

  close() {
    this.closedByUs = true;
    if (this.socket) this.socket.close();
  }

  receive(text) {
    const data = JSON.parse(text);
    if (data.event) {
      const sub = this.subscriptions.get(data.id);
      if (!sub) return;
      if (data.event === "record") sub.onRecord(data.record);
      else {
        this.subscriptions.delete(data.id);
        sub.onEnd(data.event);
      }
      return;
    }
    const pending = this.waiting.get(data.id);
    if (!pending) return;
    this.waiting.delete(data.id);
    if (data.ok) pending.resolve(data.result);
    else pending.reject(new GatewayError(data.error.code, data.error.message));
  }

  async call(op, args = {}) {
    await this.opened;
    const id = this.nextId++;
    const clean = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined));
    return new Promise((resolve, reject) => {
      this.send(id, {id, op, ...clean}, resolve, reject);
    });
  }

  // Sends a request and waits for its reply; refused at once when the connection is down
  // (between a lost connection and the next attempt a closed socket drops what it is
  // given, and nothing would ever answer).
  send(id, message, resolve, reject) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
      reject(new GatewayError("connection_closed", "the connection to the console ended"));
      return;
    }
    this.waiting.set(id, {resolve, reject});
    this.socket.send(JSON.stringify(message));
  }

  // Follows stored changes: onRecord(record) for each, onEnd(reason) once it ends.
  async subscribe(args, onRecord, onEnd = () => {}) {
    await this.opened;
    const id = this.nextId++;
    const sub = {onRecord, onEnd, active: true};
    this.subscriptions.set(id, sub);
    try {
      await new Promise((resolve, reject) => {
        this.send(id, {id, op: "subscribe", ...args}, resolve, reject);
      });
    } catch (error) {
      this.subscriptions.delete(id);
      throw error;
    }
    return {
      close: () => {
        if (!this.subscriptions.delete(id)) return;
        this.call("unsubscribe", {subscription: id}).catch(() => {});
      },
    };
  }
}

// -- application state ----------------------------------------------------------------------

const app = {
  gateway: null,
  access: "full",
  workflows: new Map(),   // name -> description from the "workflows" op
  view: null,             // {stop()} of the screen on show
};

function readOnly() {
  return app.access === "read_only";
}

function explain(error) {
  if (error instanceof GatewayError) {
    if (error.code === "forbidden") return `Refused: ${error.message}`;
    if (error.code === "invalid_transition") return `Refused: ${error.message}`;
    return `${error.code}: ${error.message}`;
  }
  return String(error && error.message ? error.message : error);
}

// -- sign in --------------------------------------------------------------------------------

async function fetchSession(token) {
  const headers = token ? {authorization: `Bearer ${token}`} : {};
  const response = await fetch("/api/session", {headers, cache: "no-store"});
  if (response.status === 401) return {refused: "A token is required to open this console."};
  if (response.status === 403) return {refused: "That token was refused."};
  if (!response.ok) return {refused: `The console answered HTTP ${response.status}.`};
  return response.json();
}

function showLogin(message) {
  document.title = "Sign in · actorflow console";
  $("#link").textContent = "signed out";
  $("#signout").hidden = true;
  $("#access").hidden = true;
  const input = el("input", {type: "password", id: "token", name: "token", required: true,
    autocomplete: "current-password"});
  const form = el("form", {class: "card", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value);
    await start();
  }},
    el("h1", {text: "Sign in"}),
    el("p", {class: "muted", text: "Paste the gateway token. It is kept in this browser tab only."}),
    message ? el("p", {class: "error", role: "alert", id: "login-error", text: message}) : null,
    el("label", {class: "field", for: "token"}, "Token", input),
    el("button", {type: "submit", text: "Open the console"}),
  );
  $("#main").replaceChildren(el("div", {class: "login"}, form));
  input.focus();
}

async function start() {
  // A link may carry the token in its fragment (#token=...), which never reaches a
  // server: keep it for this tab and take it out of the address bar.
  const offered = /^#token=([^&]*)/.exec(location.hash);
  if (offered) {
    sessionStorage.setItem(TOKEN_KEY, decodePart(offered[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  let session;
  try {
    session = await fetchSession(token);
  } catch (error) {
    $("#main").replaceChildren(el("p", {class: "error", text: `Cannot reach the console: ${error}`}));
    return;
  }
  if (session.refused) {
    if (!token) sessionStorage.removeItem(TOKEN_KEY);
    showLogin(token ? session.refused : null);
    return;
  }
  app.access = session.access;
  const badge = $("#access");
  badge.hidden = !readOnly();
  badge.textContent = "read-only";
  $("#signout").hidden = !session.auth;
  if (app.gateway) app.gateway.close();
  const gateway = new Gateway(token);
  app.gateway = gateway;
  gateway.onStatus = (text) => {
    const link = $("#link");
    link.textContent = text === "live" ? "● live" : `○ ${text}`;
    link.dataset.state = text === "live" ? "live" : "down";
  };
  gateway.onReconnect = () => route();
  try {
    await gateway.connect();
    const served = await gateway.call("workflows");
    const described = await Promise.all(served.map((wf) => gateway.call("describe", {workflow: wf.name})));
    app.workflows = new Map(described.map((wf) => [wf.name, wf]));
  } catch (error) {
    $("#main").replaceChildren(el("p", {class: "error", role: "alert", text: explain(error)}));
    return;
  }
  route();
}

// -- routing --------------------------------------------------------------------------------

// A part of an address as text; a malformed escape (a mangled link) is kept as it is.
function decodePart(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodePart);
  return {parts, params: new URLSearchParams(query)};
}

function route() {
  if (!app.gateway) return;
  if (app.view) app.view.stop();
  app.view = null;
  const {parts, params} = parseHash();
  const screen = parts[0] || "overview";
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === screen) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = $("#main");
  main.replaceChildren();
  if (screen === "runs") app.view = runsScreen(main, params);
  else if (screen === "run" && parts.length >= 3) app.view = runScreen(main, parts[1], parts[2]);
  else app.view = overviewScreen(main);
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// -- overview -------------------------------------------------------------------------------

function overviewScreen(main) {
  document.title = "Overview · actorflow console";
  const subscriptions = [];
  let stopped = false;
  main.append(el("h1", {text: "Overview"}));
  const grid = el("div", {class: "grid"});
  main.append(grid);

  for (const wf of app.workflows.values()) {
    const card = el("section", {class: "card", "aria-labelledby": `wf-${wf.name}`, "data-workflow": wf.name});
    grid.append(card);
    let pending = null;
    let lastCost = 0;  // ms the last refresh took: counting a million runs takes a while
    const refresh = async () => {
      const started = performance.now();
      const [counts, paused] = await Promise.all([
        app.gateway.call("count_runs", {workflow: wf.name}),
        app.gateway.call("list_runs", {workflow: wf.name, run_state: "PAUSED", limit: 5, descending: true}),
      ]);
      let processes = null;
      try {
        processes = await app.gateway.call("states", {workflow: wf.name});
      } catch (error) {
        processes = error;
      }
      lastCost = performance.now() - started;
      if (!stopped) renderWorkflowCard(card, wf, counts, paused, processes);
    };
    refresh().catch((error) => card.replaceChildren(el("p", {class: "error", text: explain(error)})));
    // Live: counts are read again after stored changes (at most once a second).
    app.gateway.subscribe({workflow: wf.name}, () => {
      if (pending || stopped) return;
      // At most once a second, and never more than a fifth of the time counting.
      const wait = Math.max(1000, 5 * lastCost);
      pending = setTimeout(() => { pending = null; refresh().catch(() => {}); }, wait);
    }).then((sub) => { if (stopped) sub.close(); else subscriptions.push(sub); }, () => {});
  }
  return {stop() { stopped = true; subscriptions.forEach((s) => s.close()); }};
}

function countTable(caption, entries, linkFor) {
  const rows = entries.map(([name, count]) => el("tr", {},
    el("td", {}, linkFor ? el("a", {href: linkFor(name)}, name) : name),
    el("td", {class: "num", text: String(count)})));
  return el("table", {class: "counts"},
    el("caption", {class: "muted", style: "text-align:left", text: caption}),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", {colspan: 2, class: "muted", text: "none"}))));
}

function renderWorkflowCard(card, wf, counts, paused, processes) {
  const runsLink = (extra) => `#/runs?workflow=${encodeURIComponent(wf.name)}${extra}`;
  // Attention first: paused and erroring runs, then the rest.
  const byState = Object.entries(counts.by_run_state).sort(([a], [b]) =>
    (a === "PAUSED" ? -1 : b === "PAUSED" ? 1 : RUN_STATES.indexOf(a) - RUN_STATES.indexOf(b)));
  const byStatus = Object.entries(counts.by_status);
  const pausedCount = counts.by_run_state.PAUSED || 0;
  const attention = el("div", {class: pausedCount ? "banner" : "muted"},
    pausedCount
      ? [el("strong", {text: `${pausedCount} paused`}), " — ",
         el("a", {href: runsLink("&run_state=PAUSED"), text: "show them"})]
      : "No paused runs.");
  const pausedList = paused.length
    ? el("ul", {}, paused.map((r) => el("li", {},
        el("a", {href: `#/run/${encodeURIComponent(wf.name)}/${encodeURIComponent(r.run_id)}`, text: r.foreign_id}),
        ` at ${r.status_name}: ${r.meta.run_state_reason || "no reason given"}`)))
    : null;
  let processBlock;
  if (processes instanceof Error || processes === null) {
    processBlock = el("div", {class: "slot", "data-slot": "processes",
      text: "Processes: this actorflow version does not report them (workflow.states())."});
  } else {
    // Attention first: erroring, then stopped, then the rest.
    const rank = {erroring: 0, stopped: 1, running: 2, idle: 3};
    const rows = Object.entries(processes)
      .map(([name, info]) => [name, (info && info.state) || String(info)])
      .sort(([a, x], [b, y]) => (rank[x] ?? 9) - (rank[y] ?? 9) || a.localeCompare(b))
      .map(([name, state]) => el("tr", {"data-process": name},
        el("td", {class: "mono", text: name}),
        el("td", {}, el("span", {class: `process process-${state}`, text: state}))));
    processBlock = el("div", {},
      el("table", {class: "processes"},
        el("caption", {class: "muted", style: "text-align:left", text: "Processes (workflow.states())"}),
        el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", {class: "muted", text: "none"})))),
      el("p", {class: "muted", text: "Lag per process: the workflow_process_lag_seconds metric (actorflow worker --metrics)."}));
  }
  card.replaceChildren(
    el("h2", {id: `wf-${wf.name}`}, el("a", {href: runsLink(""), text: wf.name}),
      el("span", {class: "muted", text: ` · ${counts.total} runs`})),
    attention,
    pausedList || "",
    el("div", {class: "grid"},
      countTable("By run state", byState, (name) => runsLink(`&run_state=${name}`)),
      countTable("By status", byStatus, (name) => runsLink(`&status=${name}`))),
    processBlock,
  );
}

// -- runs -----------------------------------------------------------------------------------

const RUN_STATE_VALUES = {INITIATED: 1, RUNNING: 2, PAUSED: 3, CANCELLED: 4, COMPLETED: 5,
  DATA_DELETED: 6, REQUESTED_DATA_DELETED: 7};

// The name whose value is `text` (a number given in the address), else `text` itself.
function nameOf(values, text) {
  const found = Object.entries(values).find(([, value]) => String(value) === text);
  return found ? found[0] : text;
}

function filtersFrom(params) {
  const first = app.workflows.keys().next().value;
  const workflow = app.workflows.has(params.get("workflow")) ? params.get("workflow") : first;
  const described = app.workflows.get(workflow);
  return {
    workflow,
    // The protocol takes a status or run state by name or number; the page (its live
    // matching, its filter form) works with names.
    status: nameOf(described ? described.statuses : {}, params.get("status") || ""),
    run_state: nameOf(RUN_STATE_VALUES, params.get("run_state") || ""),
    foreign_id: params.get("foreign_id") || "",
    created_after: params.get("created_after") || "",
    created_before: params.get("created_before") || "",
    after: params.get("after") || "",
  };
}

function hashFor(filters) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  return `#/runs?${params}`;
}

// <input type="datetime-local"> holds local wall time; the protocol wants ISO 8601 UTC.
function toIso(local) {
  if (!local) return undefined;
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 19);
}

// An ISO 8601 date-time as microseconds since the epoch (NaN if it is not one): Date keeps
// milliseconds only, and the store keeps microseconds.
function micros(iso) {
  const parts = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(.*)$/.exec(String(iso));
  if (!parts) return NaN;
  const seconds = Date.parse(parts[1] + parts[3]);
  return seconds * 1000 + Number((parts[2] || "").padEnd(6, "0").slice(0, 6));
}

function matches(filters, record) {
  if (filters.status && record.status_name !== filters.status) return false;
  if (filters.run_state && record.run_state !== filters.run_state) return false;
  if (filters.foreign_id && !record.foreign_id.startsWith(filters.foreign_id)) return false;
  // Compare instants, not text: the server writes "+00:00" and microseconds, the page "Z".
  if (filters.created_after && micros(record.created_at) < micros(filters.created_after)) return false;
  if (filters.created_before && micros(record.created_at) >= micros(filters.created_before)) return false;
  return true;
}

function runsScreen(main, params) {
  const filters = filtersFrom(params);
  const wf = app.workflows.get(filters.workflow);
  document.title = `Runs of ${filters.workflow} · actorflow console`;
  let stopped = false;
  let subscription = null;
  const rows = new Map();  // run_id -> <tr>
  let total = null;  // runs matching in all, once counted
  let describePage = () => {};
  const select = (name, label, options, value) => el("label", {}, label,
    el("select", {name, id: `filter-${name.replace("_", "-")}`},
      el("option", {value: "", text: "any"}),
      options.map((o) => el("option", {value: o, text: o, selected: o === value}))));
  const form = el("form", {class: "filters card", role: "search", "aria-label": "Filter runs",
    onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(form);
      navigate(hashFor({
        workflow: data.get("workflow"), status: data.get("status"), run_state: data.get("run_state"),
        foreign_id: data.get("foreign_id").trim(),
        created_after: toIso(data.get("created_after")) || "",
        created_before: toIso(data.get("created_before")) || "",
      }));
    }},
    el("label", {}, "Workflow", el("select", {name: "workflow", id: "filter-workflow"},
      [...app.workflows.keys()].map((n) => el("option", {value: n, text: n, selected: n === filters.workflow})))),
    select("status", "Status", Object.keys(wf.statuses), filters.status),
    select("run_state", "Run state", RUN_STATES, filters.run_state),
    el("label", {}, "Foreign id starts with", el("input", {name: "foreign_id", id: "filter-foreign-id",
      value: filters.foreign_id, placeholder: "order-", autocomplete: "off"})),
    el("label", {}, "Created from", el("input", {type: "datetime-local", step: 1, name: "created_after",
      id: "filter-created-after", value: toLocalInput(filters.created_after)})),
    el("label", {}, "Created before", el("input", {type: "datetime-local", step: 1, name: "created_before",
      id: "filter-created-before", value: toLocalInput(filters.created_before)})),
    el("button", {type: "submit", id: "apply-filters", text: "Apply"}),
    el("a", {href: hashFor({workflow: filters.workflow}), text: "Clear"}),
  );
  const tbody = el("tbody", {id: "runs-body"});
  const summary = el("p", {class: "muted", id: "runs-summary", role: "status", text: "Loading…"});
  const table = el("div", {class: "table-wrap"}, el("table", {id: "runs", "aria-describedby": "runs-summary"},
    el("thead", {}, el("tr", {},
      ["Foreign id", "Run id", "Status", "Run state", "Version", "Created", "Updated", "In status"].map((h, i) =>
        el("th", {scope: "col", class: [null, "hide-narrow", null, null, "num hide-narrow", "hide-narrow", "hide-narrow", null][i], text: h})))),
    tbody));
  const pager = el("div", {class: "pager"});
  const toolbar = el("div", {class: "toolbar"},
    el("h1", {text: `Runs of ${filters.workflow}`, style: "margin:0"}),
    readOnly() ? null : el("button", {type: "button", id: "trigger-run", text: "Trigger a run…",
      onclick: () => triggerDialog(wf)}));
  main.append(toolbar, form, summary, table, pager);

  const renderRow = (record, changed) => {
    const link = `#/run/${encodeURIComponent(record.workflow_name)}/${encodeURIComponent(record.run_id)}`;
    const tr = el("tr", {"data-run-id": record.run_id, "data-version": record.version,
        "data-created": record.created_at,
        "data-run-state": record.run_state, class: changed ? "changed" : null},
      el("td", {}, el("a", {href: link, text: record.foreign_id})),
      el("td", {class: "mono hide-narrow", title: record.run_id}, el("a", {href: link, tabindex: -1, text: shortId(record.run_id)})),
      el("td", {text: record.status_name}),
      el("td", {}, stateBadge(record.run_state)),
      el("td", {class: "num hide-narrow", text: String(record.version)}),
      el("td", {class: "hide-narrow", text: formatTime(record.created_at)}),
      el("td", {class: "hide-narrow", text: formatTime(record.updated_at)}),
      el("td", {"data-since": record.updated_at, text: formatAge(record.updated_at)}),
    );
    return tr;
  };

  const args = {
    workflow: filters.workflow,
    status: filters.status || undefined,
    run_state: filters.run_state || undefined,
    foreign_id_prefix: filters.foreign_id || undefined,
    created_after: filters.created_after || undefined,
    created_before: filters.created_before || undefined,
  };
  // Changes that arrive while the page is read are held and applied to it once it is
  // drawn: a run stored after the read would otherwise be wiped by the page.
  let loaded = false;
  const early = [];
  const load = async () => {
    const page = await app.gateway.call("list_runs", {...args, limit: PAGE, descending: true,
      after: filters.after || undefined});
    if (stopped) return;
    tbody.replaceChildren();
    rows.clear();
    for (const record of page) {
      const tr = renderRow(record, false);
      rows.set(record.run_id, tr);
      tbody.append(tr);
    }
    if (!page.length) tbody.append(el("tr", {}, el("td", {colspan: 8, class: "muted", text: "No runs match."})));
    const first = !filters.after;
    describePage = () => {
      summary.textContent = `${rows.size} run${rows.size === 1 ? "" : "s"} on this page, newest first` +
        (first ? "; new and changed runs appear live." : ".") +
        (total === null ? "" : ` ${total} match in all.`);
    };
    describePage();
    pager.replaceChildren(...[
      first ? null : el("button", {type: "button", class: "quiet", text: "← Newest",
        onclick: () => navigate(hashFor({...filters, after: ""}))}),
      // From the last row shown: live runs push the oldest rows off this page, and those
      // must be on the next one.
      page.length === PAGE ? el("button", {type: "button", class: "quiet", id: "older", text: "Older →",
        onclick: () => navigate(hashFor({...filters,
          after: (tbody.lastElementChild && tbody.lastElementChild.dataset.runId) || page[page.length - 1].run_id}))}) : null,
    ].filter(Boolean));
    loaded = true;
    for (const record of early.splice(0)) onRecord(record);
    app.gateway.call("count_runs", args).then((counts) => {
      total = counts.total;
      if (!stopped) describePage();
    }, () => {});
  };

  const onRecord = (record) => {
    if (!loaded) { early.push(record); return; }
    const existing = rows.get(record.run_id);
    if (existing) {
      if (Number(existing.dataset.version) >= record.version) return;
      const tr = renderRow(record, true);
      existing.replaceWith(tr);
      rows.set(record.run_id, tr);
    } else if (!filters.after && matches(filters, record)) {
      // Newest first: a new run goes on top; an older run that changed (or came to match
      // the filters) goes where its creation puts it, or nowhere when that is on a later
      // page (older than every row of a full page).
      const created = micros(record.created_at);
      const next = [...tbody.querySelectorAll("tr[data-run-id]")].find((row) => {
        const other = micros(row.dataset.created);
        return other < created || (other === created && row.dataset.runId < record.run_id);
      });
      if (!next && rows.size >= PAGE) return;
      const empty = tbody.querySelector("td[colspan]");
      if (empty) empty.parentElement.remove();
      const tr = renderRow(record, true);
      rows.set(record.run_id, tr);
      if (next) next.before(tr);
      else tbody.append(tr);
      if (total !== null) total += 1;
      if (rows.size > PAGE) {
        const last = tbody.lastElementChild;
        rows.delete(last.dataset.runId);
        last.remove();
      }
      describePage();
    }
  };

  // Subscribe first, then read the page: no change falls between the two.
  app.gateway.subscribe({workflow: filters.workflow}, onRecord, (why) => {
    if (!stopped && why === "lagged") { toast("Fell behind the live changes; reloaded."); route(); }
  }).then((sub) => { subscription = sub; if (stopped) sub.close(); return load(); })
    .catch((error) => { summary.textContent = explain(error); summary.className = "error"; });

  const ticker = setInterval(() => {
    for (const cell of tbody.querySelectorAll("td[data-since]")) cell.textContent = formatAge(cell.dataset.since);
  }, 1000);
  return {stop() { stopped = true; clearInterval(ticker); if (subscription) subscription.close(); }};
}

// -- dialogs --------------------------------------------------------------------------------

// Opens the shared <dialog>; `submit()` returns a promise, its error is shown in the dialog.
function openDialog({title, body, ok, danger = false, submit}) {
  const dialog = $("#dialog");
  $("#dialog-title").textContent = title;
  $("#dialog-body").replaceChildren(...body);
  const error = $("#dialog-error");
  error.hidden = true;
  const okButton = $("#dialog-ok");
  okButton.textContent = ok;
  okButton.className = danger ? "danger" : "";
  okButton.disabled = false;
  const form = $("#dialog-form");
  form.onsubmit = async (event) => {
    event.preventDefault();
    okButton.disabled = true;
    try {
      await submit();
      dialog.close();
    } catch (failure) {
      error.textContent = explain(failure);
      error.hidden = false;
    } finally {
      okButton.disabled = false;
    }
  };
  $("#dialog-cancel").onclick = () => dialog.close();
  dialog.showModal();
  const focus = dialog.querySelector("#dialog-body input, #dialog-body textarea, #dialog-body select");
  (focus || okButton).focus();
}

function triggerDialog(wf) {
  const foreignId = el("input", {id: "trigger-foreign-id", required: true, autocomplete: "off"});
  const start = el("select", {id: "trigger-start"},
    (wf.starts || Object.keys(wf.statuses)).map((name) => el("option", {value: name, text: name, selected: name === wf.start})));
  const initial = el("textarea", {id: "trigger-initial", rows: 8, spellcheck: "false"});
  initial.value = JSON.stringify(wf.initial ?? {}, null, 2);
  openDialog({
    title: `Trigger a run of ${wf.name}`,
    ok: "Trigger",
    body: [
      el("label", {class: "field", for: "trigger-foreign-id"}, "Foreign id", foreignId),
      el("label", {class: "field", for: "trigger-start"}, "Start status", start),
      el("label", {class: "field", for: "trigger-initial"},
        `Initial object (JSON, checked against ${wf.object_type || "the object type"})`, initial),
    ],
    submit: async () => {
      if (!foreignId.value.trim()) throw new Error("A foreign id is required.");
      let object;
      try {
        object = JSON.parse(initial.value || "{}");
      } catch (error) {
        throw new Error(`The initial object is not valid JSON: ${error.message}`);
      }
      if (object === null || typeof object !== "object" || Array.isArray(object)) {
        throw new Error("The initial object must be a JSON object ({...}).");
      }
      const runId = await app.gateway.call("trigger", {workflow: wf.name,
        foreign_id: foreignId.value.trim(), start: start.value, initial: object});
      toast(`Triggered run ${shortId(runId)}.`);
      navigate(`#/run/${encodeURIComponent(wf.name)}/${encodeURIComponent(runId)}`);
    },
  });
}

function steerDialog(wf, record, action) {
  const reason = el("input", {id: "steer-reason", autocomplete: "off",
    value: "", placeholder: `${action.label.toLowerCase()} from the console`});
  openDialog({
    title: `${action.label} run ${record.foreign_id}?`,
    ok: action.label,
    danger: !!action.danger,
    body: [
      el("p", {text: `Run ${record.run_id} is ${record.run_state} at ${record.status_name}.` +
        (action.op === "delete_data" ? " Its object will be scrubbed; this cannot be undone." : "")}),
      el("label", {class: "field", for: "steer-reason"}, "Reason (kept with the run)", reason),
    ],
    submit: async () => {
      const text = reason.value.trim() || `${action.label.toLowerCase()} from the console`;
      await app.gateway.call(action.op, {workflow: wf.name, run_id: record.run_id, reason: text});
      toast(`${action.label}: done.`);
    },
  });
}

function callbackDialog(wf, record) {
  const status = el("select", {id: "callback-status"},
    (wf.callbacks || []).map((name) => el("option", {value: name, text: name, selected: name === record.status_name})));
  const payload = el("textarea", {id: "callback-payload", rows: 6, spellcheck: "false"});
  openDialog({
    title: `Deliver a callback to ${record.foreign_id}`,
    ok: "Deliver",
    body: [
      el("label", {class: "field", for: "callback-status"}, "At status", status),
      el("label", {class: "field", for: "callback-payload"}, "Payload (text, sent as UTF-8 bytes)", payload),
    ],
    submit: async () => {
      const bytes = new TextEncoder().encode(payload.value);
      let binary = "";
      for (const byte of bytes) binary += String.fromCharCode(byte);
      const result = await app.gateway.call("callback", {workflow: wf.name,
        foreign_id: record.foreign_id, status: status.value, payload: btoa(binary)});
      if (result === null) throw new Error(`The latest run of ${record.foreign_id} is not at ${status.value}; nothing was delivered.`);
      toast("Callback delivered.");
    },
  });
}

// -- one run --------------------------------------------------------------------------------

function diffObjects(before, after, path = "", out = []) {
  const isObject = (v) => v !== null && typeof v === "object";
  if (isObject(before) && isObject(after) && Array.isArray(before) === Array.isArray(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const key of keys) {
      const sub = Array.isArray(after) ? `${path}[${key}]` : (path ? `${path}.${key}` : key);
      // Own keys only: "constructor" or "toString" in the data are not inherited methods.
      if (!Object.hasOwn(before, key)) out.push({op: "added", path: sub, after: after[key]});
      else if (!Object.hasOwn(after, key)) out.push({op: "removed", path: sub, before: before[key]});
      else diffObjects(before[key], after[key], sub, out);
    }
  } else if (JSON.stringify(before) !== JSON.stringify(after)) {
    out.push({op: "changed", path: path || "(object)", before, after});
  }
  return out;
}

function diffTable(changes) {
  if (!changes.length) return el("p", {class: "muted", id: "diff-none", text: "The object did not change in this version."});
  const show = (v) => v === undefined ? "" : JSON.stringify(v);
  // A huge change (a list of 50,000 items added) would take the page tens of seconds to
  // draw, again at every live change: the first DIFF_ROWS are shown, the rest counted.
  const hidden = Math.max(0, changes.length - DIFF_ROWS);
  const table = el("table", {class: "diff", id: "diff"},
    el("thead", {}, el("tr", {}, el("th", {text: "change"}), el("th", {text: "field"}),
      el("th", {text: "before"}), el("th", {text: "after"}))),
    el("tbody", {}, changes.slice(0, DIFF_ROWS).map((c) => el("tr", {class: `diff-${c.op}`},
      el("td", {class: "op", text: {added: "+ added", removed: "− removed", changed: "~ changed"}[c.op]}),
      el("td", {text: c.path}), el("td", {text: show(c.before)}), el("td", {text: show(c.after)})))));
  if (!hidden) return table;
  return el("div", {}, table, el("p", {class: "muted", id: "diff-more",
    text: `… and ${hidden} more changes, not listed; the object below is complete.`}));
}

let mermaidLoading = null;
function loadMermaid() {
  if (!mermaidLoading) {
    mermaidLoading = new Promise((resolve, reject) => {
      const script = el("script", {src: MERMAID});
      script.onload = () => {
        window.mermaid.initialize({startOnLoad: false, securityLevel: "strict", theme: "neutral",
          suppressErrorRendering: true});
        resolve(window.mermaid);
      };
      script.onerror = () => reject(new Error("could not load Mermaid"));
      document.head.append(script);
    });
  }
  return mermaidLoading;
}

let graphCounter = 0;
async function renderGraph(box, wf, history) {
  if (!wf.graph) {
    box.replaceChildren(el("p", {class: "muted", text: "No graph for this workflow."}));
    return;
  }
  let graphId = null;
  const current = history[history.length - 1];
  const visited = [...new Set(history.map((r) => r.status_name))].filter((n) => n !== current.status_name);
  let text = wf.graph.trimEnd() + "\n";
  text += "    classDef visited fill:#dfe8f7,stroke:#2357c6,stroke-width:1px\n";
  text += "    classDef current fill:#ffd98a,stroke:#1d2329,stroke-width:3px,font-weight:bold\n";
  if (visited.length) text += `    class ${visited.join(",")} visited\n`;
  text += `    class ${current.status_name} current\n`;
  const legend = el("p", {class: "muted", id: "graph-legend"},
    `Current status: `, el("strong", {text: current.status_name}),
    visited.length ? `; passed through: ${visited.join(", ")}` : "");
  try {
    const mermaid = await loadMermaid();
    graphId = `graph-${++graphCounter}`;
    const {svg} = await mermaid.render(graphId, text);
    const figure = el("div", {class: "graph", role: "img",
      "aria-label": `Workflow graph; current status ${current.status_name}`});
    // Mermaid's output is SVG it built and sanitised itself (securityLevel strict) from
    // status names, which are Python identifiers.
    figure.innerHTML = svg;
    box.replaceChildren(figure, legend);
  } catch (error) {
    // Mermaid leaves what it was drawing (an error diagram) at the end of the body.
    if (graphId) for (const id of [graphId, `d${graphId}`]) document.getElementById(id)?.remove();
    box.replaceChildren(el("pre", {text: wf.graph}), legend,
      el("p", {class: "muted", text: `(graph not drawn: ${error.message})`}));
  }
}

function runScreen(main, workflowName, runId) {
  const wf = app.workflows.get(workflowName);
  document.title = `Run ${shortId(runId)} · actorflow console`;
  if (!wf) {
    main.append(el("p", {class: "error", text: `No workflow named ${workflowName} is served here.`}));
    return {stop() {}};
  }
  let stopped = false;
  let subscription = null;
  let history = [];
  let selected = null;  // version shown, null = latest
  const header = el("section", {class: "card", id: "run-header"});
  const steer = el("div", {class: "toolbar", id: "steer"});
  const timeline = el("ol", {class: "timeline", id: "timeline", "aria-label": "Versions"});
  const detail = el("div", {id: "version-detail"});
  const timers = el("div", {id: "timers"});
  const graph = el("div", {id: "graph", "aria-live": "off"}, el("p", {class: "muted", text: "Drawing the graph…"}));
  main.append(
    el("p", {}, el("a", {href: `#/runs?workflow=${encodeURIComponent(wf.name)}`, text: `← Runs of ${wf.name}`})),
    header,
    el("div", {class: "cols"},
      el("section", {class: "card", "aria-labelledby": "h-history"},
        el("h2", {id: "h-history", text: "History"}), timeline,
        el("h2", {text: "Pending timers"}), timers),
      el("div", {},
        el("section", {class: "card", "aria-labelledby": "h-version"}, el("h2", {id: "h-version", text: "Version"}), detail),
        el("section", {class: "card", "aria-labelledby": "h-graph"}, el("h2", {id: "h-graph", text: "Graph"}), graph))),
  );

  const renderHeader = () => {
    const record = history[history.length - 1];
    const meta = record.meta || {};
    steer.replaceChildren();
    if (readOnly()) {
      steer.append(el("span", {class: "muted", text: "Read-only access: steering is not available."}));
    } else {
      for (const action of STEERING) {
        const suggested = action.from.includes(record.run_state);
        steer.append(el("button", {type: "button", id: `steer-${action.op}`,
          class: action.danger ? "danger" : (suggested ? "" : "quiet"),
          "aria-describedby": "run-state-now",
          onclick: () => steerDialog(wf, record, action)}, action.label + "…"));
      }
      if ((wf.callbacks || []).length) {
        steer.append(el("button", {type: "button", class: "quiet", id: "deliver-callback",
          onclick: () => callbackDialog(wf, record)}, "Deliver callback…"));
      }
    }
    header.replaceChildren(
      el("h1", {}, `${record.foreign_id} `, el("span", {class: "muted mono", text: record.run_id})),
      el("dl", {class: "kv"},
        el("dt", {text: "Workflow"}), el("dd", {text: wf.name}),
        el("dt", {text: "Status"}), el("dd", {id: "run-status", text: record.status_name}),
        el("dt", {text: "Run state"}), el("dd", {id: "run-state-now"}, stateBadge(record.run_state)),
        el("dt", {text: "Version"}), el("dd", {id: "run-version", text: String(record.version)}),
        el("dt", {text: "Created"}), el("dd", {text: formatTime(record.created_at)}),
        el("dt", {text: "Updated"}), el("dd", {text: `${formatTime(record.updated_at)} (${formatAge(record.updated_at)} ago)`}),
        meta.run_state_reason ? [el("dt", {text: "Reason"}), el("dd", {text: meta.run_state_reason})] : null,
        meta.error_count ? [el("dt", {text: "Errors"}), el("dd", {class: "error",
          text: `${meta.error_count}: ${meta.error_message || ""}`})] : null,
      ),
      steer,
    );
  };

  const renderTimeline = () => {
    timeline.replaceChildren(...history.map((record, index) => {
      const meta = record.meta || {};
      const previous = history[index - 1];
      const moved = previous && previous.status_name !== record.status_name ? `${previous.status_name} → ` : "";
      const why = [meta.run_state_reason, meta.error_message ? `error: ${meta.error_message}` : ""].filter(Boolean).join(" · ");
      const isSelected = (selected ?? history[history.length - 1].version) === record.version;
      return el("li", {},
        el("button", {type: "button", "data-version": record.version, "aria-pressed": isSelected ? "true" : "false",
          onclick: () => { selected = record.version; renderTimeline(); renderDetail(); }},
          el("span", {}, `v${record.version} · ${moved}${record.status_name} · `, stateBadge(record.run_state)),
          el("span", {class: "when", text: formatTime(record.updated_at)}),
          why ? el("span", {class: "why", text: why}) : null));
    }));
  };

  const renderDetail = () => {
    const version = selected ?? history[history.length - 1].version;
    const index = history.findIndex((r) => r.version === version);
    const record = history[index];
    const previous = history[index - 1];
    detail.replaceChildren(
      el("p", {class: "muted", id: "version-title",
        text: `Version ${record.version} at ${formatTime(record.updated_at)}` +
          (previous ? `, compared with version ${previous.version}` : " (the first version)")}),
      el("h3", {text: "Changes"}),
      previous ? diffTable(diffObjects(previous.object, record.object)) : el("p", {class: "muted", text: "First version: no earlier object."}),
      el("h3", {text: "Object"}),
      el("pre", {id: "object-json", text: JSON.stringify(record.object, null, 2)}),
    );
  };

  const renderTimers = async () => {
    let found;
    try {
      found = await app.gateway.call("timers", {workflow: wf.name, run_id: runId});
    } catch (error) {
      timers.replaceChildren(el("p", {class: "muted", text: explain(error)}));
      return;
    }
    if (stopped) return;
    timers.replaceChildren(found.length
      ? el("ul", {}, found.map((t) => el("li", {},
          `${t.status_name}: due ${formatTime(t.fire_at)} (${formatDue(t.fire_at)})`)))
      : el("p", {class: "muted", text: "None."}));
  };

  // The graph and the timers change only with the status: a run saving and repeating
  // at one status redraws neither (Mermaid takes a while), and a burst of changes is
  // drawn once, at most ten times a second.
  let drawnFor = null;
  const renderAll = () => {
    renderHeader();
    renderTimeline();
    renderDetail();
    const current = history[history.length - 1];
    const key = `${current.status_name}|${current.run_state}`;
    if (key !== drawnFor) {
      drawnFor = key;
      renderGraph(graph, wf, history);
      renderTimers();
    }
  };
  let drawSoon = null;
  const renderLater = () => {
    if (drawSoon === null) drawSoon = setTimeout(() => { drawSoon = null; if (!stopped) renderAll(); }, 100);
  };

  const onRecord = (record) => {
    const last = history[history.length - 1];
    if (last && record.version <= last.version) return;
    history.push(record);
    if (!stopped) renderLater();
  };

  app.gateway.subscribe({workflow: wf.name, run_id: runId}, onRecord, (why) => {
    if (!stopped && why === "lagged") route();
  }).then(async (sub) => {
    subscription = sub;
    if (stopped) { sub.close(); return; }
    const stored = await app.gateway.call("history", {workflow: wf.name, run_id: runId});
    const seen = new Set(stored.map((r) => r.version));
    history = stored.concat(history.filter((r) => !seen.has(r.version))).sort((a, b) => a.version - b.version);
    if (!stopped) renderAll();
  }).catch((error) => {
    header.replaceChildren(el("p", {class: "error", role: "alert", text: explain(error)}));
  });
  return {stop() { stopped = true; if (subscription) subscription.close(); }};
}

// -- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (app.gateway) app.gateway.close();
    app.gateway = null;
    if (app.view) app.view.stop();
    app.view = null;
    showLogin(null);
  });
  start();
});
// For tests and for people in the devtools: the page's live connection.
window.actorflowConsole = app;
