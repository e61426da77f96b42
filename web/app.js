// The status page: polls /api/v1/status and renders it. No framework, nothing secret shown
// (the API carries none).
"use strict";

const REFRESH_MS = 3000;
let lastOk = null;

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

function setText(id, text) {
  document.getElementById(id).textContent = text;
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

  renderCluster(s);
  renderOverlay(s);
  renderPods(s);

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
      const when = p.last_error_at ? ` (${ago(s.now - p.last_error_at)} ago)` : "";
      li.append(el("p", "error", `last error${when}: ${p.last_error}`));
    }
    return li;
  }));
}

function renderCluster(s) {
  const api = document.getElementById("api");
  const body = document.querySelector("#nodes tbody");
  const c = s.cluster;
  if (!c) {
    api.textContent = "No view of the Kubernetes API yet.";
    api.className = "api";
    body.replaceChildren();
    return;
  }
  const since = ago(s.now - c.api_since);
  api.textContent = c.api_reachable
    ? `Kubernetes API reachable for ${since} · view v${c.snapshot_version}`
    : `Kubernetes API unreachable for ${since}; showing the last view (v${c.snapshot_version})`;
  api.className = c.api_reachable ? "api ok" : "api failed";
  body.replaceChildren(...c.nodes.map((n) => {
    const tr = el("tr", n.this_node ? "this-node" : "");
    tr.dataset.node = n.name;
    const ready = n.ready === true ? "ready" : n.ready === false ? "not ready" : "unknown";
    tr.append(
      el("td", "", n.this_node ? `${n.name} (this node)` : n.name),
      el("td", `ready-${ready.replace(" ", "-")}`, ready),
      el("td", "", n.pod_cidrs.length ? n.pod_cidrs.join(", ") : "none yet"),
      el("td", "", n.underlay_address || n.internal_ip || "–"),
    );
    return tr;
  }));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function renderOverlay(s) {
  const head = document.getElementById("overlay");
  const body = document.querySelector("#peers tbody");
  const skipped = document.getElementById("skipped");
  const o = s.overlay;
  if (!o) {
    head.textContent = "The overlay has not reported yet.";
    body.replaceChildren();
    skipped.replaceChildren();
    return;
  }
  // Public key only: the private key never leaves the node's key file.
  head.textContent = `${o.interface}: ${o.backend} WireGuard (${o.backend_reason}) · ` +
    `port ${o.listen_port} · MTU ${o.mtu} · public key ${o.public_key}`;
  body.replaceChildren(...o.peers.map((p) => {
    const tr = el("tr");
    tr.dataset.peer = p.node || p.public_key;
    tr.append(
      el("td", "", p.node || `unknown (${p.public_key.slice(0, 8)}…)`),
      el("td", p.up ? "ready-ready" : "ready-not-ready", p.up ? "up" : "no session"),
      el("td", "", p.endpoint || "–"),
      el("td", "", p.allowed_ips.join(", ")),
      el("td", "", p.latest_handshake_seconds == null ? "never" : `${ago(p.latest_handshake_seconds)} ago`),
      el("td", "", bytes(p.rx_bytes)),
      el("td", "", bytes(p.tx_bytes)),
    );
    return tr;
  }));
  skipped.replaceChildren(...o.skipped.map((k) => el("li", "", `${k.node}: not a peer; ${k.why}`)));
}

function renderPods(s) {
  const ipam = document.getElementById("ipam");
  const body = document.querySelector("#pods tbody");
  const i = s.ipam;
  if (!i) {
    ipam.textContent = "No pod addresses yet.";
    body.replaceChildren();
    return;
  }
  ipam.textContent = i.cidrs.length
    ? i.cidrs.map((c) => `${c.cidr}: ${c.used} used, ${c.capacity - c.used} free`).join(" · ")
    : "This node has no pod CIDR yet.";
  body.replaceChildren(...i.pods.map((p) => {
    const tr = el("tr");
    tr.dataset.pod = `${p.namespace}/${p.name}`;
    tr.append(
      el("td", "", p.namespace ? `${p.namespace}/${p.name}` : p.container),
      el("td", "", p.address),
      el("td", "", p.interface),
      el("td", "", p.container),
    );
    return tr;
  }));
}

async function refresh() {
  const banner = document.getElementById("banner");
  try {
    const res = await fetch("/api/v1/status", { cache: "no-store" });
    if (!res.ok) throw new Error(`the daemon answered ${res.status}`);
    render(await res.json());
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
