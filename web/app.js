// The status page: polls /api/v1/status (identity, parts, each section's summary) and each
// section's details at its own address, and renders them. Sections this script knows get their
// own layout; any other a part registers is shown as its summary and tables of its lists. No
// framework, nothing secret shown (the API carries none).
"use strict";

const REFRESH_MS = 3000;
/// Rows per list and request; the API pages longer lists.
const PAGE_LIMIT = 50;
/// Known sections first, in this order; the others follow by name.
const ORDER = ["cluster", "services", "peers", "ipam"];
let lastOk = null;
/// The offset each section is paged to, by section name.
const offsets = {};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function ago(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

/// A table: `cells` turns one item into its row's cells, each [class, text].
function table(id, headers, items, cells, key) {
  const t = el("table");
  t.id = id;
  const head = el("tr");
  head.append(...headers.map((h) => el("th", "", h)));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  tbody.append(...items.map((item) => {
    const tr = el("tr");
    if (key) Object.assign(tr.dataset, key(item));
    tr.append(...cells(item).map(([cls, text]) => el("td", cls, text)));
    return tr;
  }));
  t.append(thead, tbody);
  const wrap = el("div", "table-wrap");
  wrap.append(t);
  return wrap;
}

/// "1–50 of 120 pods" with previous/next, when a list is longer than a page.
function pager(name, details, list) {
  const page = details.page;
  const total = page && page.totals ? page.totals[list] : undefined;
  if (total === undefined || total <= page.limit && page.offset === 0) return [];
  const shown = details[list].length;
  const p = el("p", "pager");
  p.dataset.list = `${name}.${list}`;
  const from = shown ? page.offset + 1 : 0;
  const prev = el("button", "", "previous");
  prev.disabled = page.offset === 0;
  prev.addEventListener("click", () => {
    offsets[name] = Math.max(0, page.offset - page.limit);
    refresh();
  });
  const next = el("button", "", "next");
  next.disabled = page.offset + shown >= total;
  next.addEventListener("click", () => {
    offsets[name] = page.offset + page.limit;
    refresh();
  });
  p.append(el("span", "", `${from}–${page.offset + shown} of ${total} ${list}`), prev, next);
  return [p];
}

function renderCluster(name, section, c, s) {
  if (!c) return [el("p", "api", "No view of the Kubernetes API yet.")];
  const since = ago(s.now - c.api_since);
  const api = el("p", c.api_reachable ? "api ok" : "api failed", c.api_reachable
    ? `Kubernetes API reachable for ${since} · view v${c.snapshot_version}`
    : `Kubernetes API unreachable for ${since}; showing the last view (v${c.snapshot_version})`);
  api.id = "api";
  const nodes = table("nodes", ["Node", "Ready", "Pod CIDRs", "Address"], c.nodes, (n) => {
    const ready = n.ready === true ? "ready" : n.ready === false ? "not ready" : "unknown";
    return [
      ["", n.this_node ? `${n.name} (this node)` : n.name],
      [`ready-${ready.replace(" ", "-")}`, ready],
      ["", n.pod_cidrs.length ? n.pod_cidrs.join(", ") : "none yet"],
      ["", n.underlay_address || n.internal_ip || "–"],
    ];
  }, (n) => ({ node: n.name }));
  return [api, nodes, ...pager(name, c, "nodes")];
}

/// What each peer state means, for the tooltip.
const PEER_STATES = {
  up: "a handshake within the last 180 s: traffic flows",
  idle: "no session, and nothing sent to it since it was last up: no traffic needed one",
  connecting: "sending to it without a session; a handshake is under way",
  broken: "sending to it without a session for 15 s or more: it does not answer",
};

function renderPeers(name, section, o) {
  if (!o) return [el("p", "api", "The overlay has not reported yet.")];
  // Public key only: the private key never leaves the node's key file.
  const head = el("p", "api", `${o.interface}: ${o.backend} WireGuard (${o.backend_reason}) · ` +
    `port ${o.listen_port} · MTU ${o.mtu} · public key ${o.public_key}`);
  head.id = "overlay";
  const peers = table("peers", ["Peer node", "State", "Endpoint", "Allowed IPs", "Last handshake", "Received", "Sent"], o.peers, (p) => {
    const state = p.state || (p.up ? "up" : "idle");
    return [
      ["", p.node || `unknown (${p.public_key.slice(0, 8)}…)`],
      [`peer-${state}`, state],
      ["", p.endpoint || "–"],
      ["", p.allowed_ips.join(", ")],
      ["", p.latest_handshake_seconds == null ? "never" : `${ago(p.latest_handshake_seconds)} ago`],
      ["", bytes(p.rx_bytes)],
      ["", bytes(p.tx_bytes)],
    ];
  }, (p) => ({ peer: p.node || p.public_key, state: p.state || (p.up ? "up" : "idle") }));
  for (const td of peers.querySelectorAll("td[class^=peer-]")) {
    td.title = PEER_STATES[td.textContent] || "";
  }
  const skipped = el("ul", "skipped");
  skipped.id = "skipped";
  skipped.append(...o.skipped.map((k) => el("li", "", `${k.node}: not a peer; ${k.why}`)));
  return [head, peers, ...pager(name, o, "peers"), skipped];
}

function renderIpam(name, section, i) {
  if (!i) return [el("p", "api", "No pod addresses yet.")];
  const use = el("p", "api", i.cidrs.length
    ? i.cidrs.map((c) => `${c.cidr}: ${c.used} used, ${c.capacity - c.used} free`).join(" · ")
    : "This node has no pod CIDR yet.");
  use.id = "ipam";
  const pods = table("pods", ["Pod", "Address", "Interface", "Container"], i.pods, (p) => [
    ["", p.namespace ? `${p.namespace}/${p.name}` : p.container],
    ["", p.address],
    ["", p.interface],
    ["", p.container],
  ], (p) => ({ pod: `${p.namespace}/${p.name}` }));
  return [use, pods, ...pager(name, i, "pods")];
}

function text(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/// A section this page has no layout for: its summary as facts, each list as a table.
function renderGeneric(name, section, details) {
  if (section.summary === null) return [el("p", "api", "Not reported yet.")];
  const out = [];
  const summary = section.summary;
  if (summary !== null && typeof summary === "object" && !Array.isArray(summary)) {
    const dl = el("dl", "facts");
    for (const [k, v] of Object.entries(summary)) dl.append(el("dt", "", k.replaceAll("_", " ")), el("dd", "", text(v)));
    out.push(dl);
  } else {
    out.push(el("p", "api", text(summary)));
  }
  const lists = details && details.page ? Object.keys(details.page.totals || {}) : [];
  for (const list of lists) {
    const items = details[list] || [];
    const columns = [...new Set(items.flatMap((item) => (item && typeof item === "object" ? Object.keys(item) : ["value"])))];
    out.push(el("p", "list-title", list.replaceAll("_", " ")));
    out.push(table(`${name}-${list}`, columns.map((c) => c.replaceAll("_", " ")), items,
      (item) => columns.map((c) => ["", text(item && typeof item === "object" ? item[c] : item)])));
    out.push(...pager(name, details, list));
  }
  return out;
}

/// One endpoint as the services table shows it: address, pod, and what it is to this node.
function endpointText(e) {
  const marks = [];
  if (e.local) marks.push("local");
  if (e.terminating) marks.push(e.serving ? "terminating, serving" : "terminating");
  else if (!e.ready) marks.push("not ready");
  if (!e.in_use) marks.push("not used");
  return `${e.address}${e.pod ? ` (${e.pod})` : ""}${marks.length ? ` [${marks.join(", ")}]` : ""}`;
}

function renderServices(name, section, v) {
  if (!v) return [el("p", "api", "The service proxy has not synced yet.")];
  const sync = v.last_sync;
  const head = el("p", "api", sync
    ? `Last sync ${ago(Math.max(0, Math.floor(Date.now() / 1000) - sync.at))} ago: ` +
      `${sync.full ? "full (compared with the kernel's table)" : "partial"}, ` +
      `${sync.duration_ms.toFixed(1)} ms, ${sync.changed} change${sync.changed === 1 ? "" : "s"} ` +
      `in ${sync.transactions} transaction${sync.transactions === 1 ? "" : "s"} · ${v.syncs} syncs` +
      (v.failures ? ` · ${v.failures} refused by the kernel` : "")
    : "No sync yet.");
  head.id = "proxy-sync";
  const rows = table("services", ["Service", "Port", "Addresses", "Policies", "Endpoints"], v.services, (s) => [
    ["", `${s.namespace}/${s.name}`],
    ["", `${s.port}/${s.protocol}${s.port_name ? ` (${s.port_name})` : ""}${s.node_port ? ` · NodePort ${s.node_port}` : ""}`],
    ["", [...s.cluster_ips, ...s.external_ips].join(", ")],
    ["", `external ${s.external_traffic_policy} · internal ${s.internal_traffic_policy}` +
      (s.affinity_seconds ? ` · affinity ${s.affinity_seconds}s` : "")],
    [s.verdict ? "no-endpoints" : "", s.verdict || s.endpoints.map(endpointText).join("; ")],
  ], (s) => ({ service: `${s.namespace}/${s.name}`, port: String(s.port) }));
  const problems = el("ul", "skipped");
  problems.id = "service-problems";
  problems.append(...v.problems.map((p) => el("li", "", `${p.service || "proxy"}: not programmed; ${p.problem}`)));
  return [head, rows, ...pager(name, v, "services"), problems];
}

const RENDERERS = { cluster: renderCluster, services: renderServices, peers: renderPeers, ipam: renderIpam };

function sectionOrder(a, b) {
  const ia = ORDER.indexOf(a) < 0 ? ORDER.length : ORDER.indexOf(a);
  const ib = ORDER.indexOf(b) < 0 ? ORDER.length : ORDER.indexOf(b);
  return ia - ib || a.localeCompare(b);
}

async function fetchJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(`the daemon answered ${res.status} for ${path}`);
  return res.json();
}

/// One <section> per registered section, kept across refreshes; their details fetched at once.
async function renderSections(s) {
  const sections = s.sections || {};
  const names = Object.keys(sections).sort(sectionOrder);
  const details = await Promise.all(names.map((name) => {
    const sec = sections[name];
    if (sec.summary === null) return null;
    return fetchJson(`${sec.href}?offset=${offsets[name] || 0}&limit=${PAGE_LIMIT}`);
  }));
  const container = document.getElementById("sections");
  const nodes = names.map((name, i) => {
    const sec = sections[name];
    let node = container.querySelector(`section[data-section="${name}"]`);
    if (!node) {
      node = el("section");
      node.dataset.section = name;
      node.setAttribute("aria-labelledby", `${name}-h`);
      const h = el("h2");
      h.id = `${name}-h`;
      node.append(h, el("div", "section-body"));
    }
    node.querySelector("h2").textContent = sec.title;
    const render = RENDERERS[name] || renderGeneric;
    node.querySelector(".section-body").replaceChildren(...render(name, sec, details[i], s));
    return node;
  });
  container.replaceChildren(...nodes);
}

function renderParts(s) {
  const list = document.getElementById("parts");
  list.replaceChildren(...s.parts.map((p) => {
    const li = el("li", `part ${p.state}`);
    li.dataset.part = p.name;
    const head = el("div", "part-head");
    head.append(el("span", "part-name", p.name), el("span", `badge ${p.state}`, p.state));
    li.append(head);
    if (p.detail) li.append(el("p", "detail", p.detail));
    li.append(el("p", "since", `${p.state} for ${ago(s.now - p.since)}` +
      (p.restarts ? ` · restarted ${p.restarts}×` : "")));
    if (p.last_error) {
      const when = p.last_error_at ? `${ago(s.now - p.last_error_at)} ago` : "";
      // A past error stays visible (a flapping part can be diagnosed) but does not look current.
      li.append(p.last_error_resolved
        ? el("p", "error resolved", `last error ${when}, resolved: ${p.last_error}`)
        : el("p", "error", `last error${when ? ` (${when})` : ""}: ${p.last_error}`));
    }
    if (p.last_repair) {
      // Drift the part found in the kernel and put right: worth knowing, not an alarm.
      const when = p.last_repair_at ? `${ago(s.now - p.last_repair_at)} ago` : "";
      const count = p.repairs > 1 ? ` (${p.repairs} repairs since start)` : "";
      li.append(el("p", "repair", `repaired ${when}: ${p.last_repair}${count}`));
    }
    return li;
  }));
}

function render(s) {
  setText("node", s.node);
  document.title = `skein · ${s.node} · ${s.overall}`;
  const overall = document.getElementById("overall");
  overall.textContent = s.overall;
  overall.className = `badge ${s.overall}`;
  setText("version", s.version);
  setText("uptime", ago(s.uptime_seconds));
  setText("ready", s.ready ? "yes" : "not yet");
  document.querySelector("#config code").textContent = s.config_path;
  document.querySelector("#state code").textContent = s.state_path;
  renderParts(s);
}

async function refresh() {
  const banner = document.getElementById("banner");
  try {
    const s = await fetchJson("/api/v1/status");
    render(s);
    await renderSections(s);
    lastOk = Date.now();
    banner.hidden = true;
  } catch (err) {
    banner.hidden = false;
    banner.textContent = lastOk
      ? `Cannot reach the daemon (${err.message}); showing what it said ${ago(Math.round((Date.now() - lastOk) / 1000))} ago.`
      : `Cannot reach the daemon: ${err.message}. Retrying…`;
  }
  setText("updated", lastOk ? `updated ${new Date(lastOk).toLocaleTimeString()}` : "not updated yet");
}

refresh();
setInterval(refresh, REFRESH_MS);
