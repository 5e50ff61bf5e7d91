// The dashboard page: one EventSource on /events brings the agent's status
// JSON (the schema of `agent status --json`); the page keeps one element per
// share, peer, connect and broker, keyed by a data attribute, and updates
// them in place, so a copy button or a selection survives an update.
"use strict";

const units = ["B", "KiB", "MiB", "GiB", "TiB"];
function bytes(n) {
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function rate(n) { return n > 0 ? bytes(n) + "/s" : ""; }
function ms(v) { return v > 0 ? v.toFixed(v < 1 ? 2 : 1) + " ms" : "–"; }
function ago(t) {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(t)) / 1000));
  if (!isFinite(s)) return "";
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + m + "m";
  if (m > 0) return m + "m " + (s % 60) + "s";
  return s + "s";
}
function short(id) { return (id || "").slice(0, 12); }

function set(root, sel, text) {
  const el = sel ? root.querySelector(sel) : root;
  if (el && el.textContent !== String(text)) el.textContent = text;
  return el;
}
// setBytes shows a count for people and keeps the exact number in
// data-value for scripts and tests.
function setBytes(root, sel, n) {
  const el = set(root, sel, bytes(n));
  if (el) el.dataset.value = String(n);
}

// Rates come from two readings of the same counter: bytes over the time
// between the events that carried them.
const prev = new Map();
function rates(key, bin, bout) {
  const now = performance.now(), p = prev.get(key);
  prev.set(key, { t: now, bin, bout, rin: p ? p.rin : 0, rout: p ? p.rout : 0 });
  if (!p || now - p.t < 200) return p ? { rin: p.rin, rout: p.rout } : { rin: 0, rout: 0 };
  const dt = (now - p.t) / 1000, r = { rin: Math.max(0, (bin - p.bin) / dt), rout: Math.max(0, (bout - p.bout) / dt) };
  Object.assign(prev.get(key), r);
  return r;
}
function traffic(el, key, bin, bout) {
  setBytes(el, ".bytes-in", bin);
  setBytes(el, ".bytes-out", bout);
  const r = rates(key, bin, bout);
  set(el, ".rate-in", rate(r.rin));
  set(el, ".rate-out", rate(r.rout));
}

// sync makes container hold one element per item, in the items' order.
function sync(container, tpl, items, key, fill) {
  const have = new Map();
  for (const el of container.children) have.set(el.dataset.key, el);
  const keep = new Set();
  let at = 0;
  for (const it of items) {
    const k = key(it);
    keep.add(k);
    let el = have.get(k);
    if (!el) {
      el = document.getElementById(tpl).content.firstElementChild.cloneNode(true);
      el.dataset.key = k;
    }
    if (container.children[at] !== el) container.insertBefore(el, container.children[at] || null);
    fill(el, it);
    at++;
  }
  for (const [k, el] of have) if (!keep.has(k)) { el.remove(); prev.delete(k); }
  const empty = document.querySelector('[data-empty="' + container.id + '"]');
  if (empty) empty.hidden = items.length > 0;
}

let qrSeq = 0;
function fillShare(el, s) {
  el.dataset.share = s.name;
  set(el, ".name", s.name);
  set(el, ".target", s.target);
  const t = el.querySelector(".ticket");
  if (t.textContent !== (s.ticket || "")) {
    t.textContent = s.ticket || "";
    const img = el.querySelector(".qr");
    img.hidden = !s.ticket;
    if (s.ticket) img.src = "/qr/" + encodeURIComponent(s.name) + "?v=" + (++qrSeq);
  }
  el.querySelector(".copy").hidden = !s.ticket;
  set(el, ".streams", s.streams);
  set(el, ".connections", s.connections);
  set(el, ".allow", (s.allow || []).map(short).join(", ") || "ticket holders");
  set(el, ".admitted", (s.admitted || []).map(short).join(", ") || "–");
  el.querySelector(".code-row").hidden = !s.code;
  set(el, ".code", s.code || "");
  set(el, ".code-expires", s.code_expires ? "expires " + new Date(s.code_expires).toLocaleTimeString() : "");
  traffic(el, el.dataset.key, s.bytes_in, s.bytes_out);
}

function fillPeer(el, p) {
  el.dataset.peer = p.peer;
  el.dataset.role = p.role;
  el.dataset.paused = String(!!p.paused);
  set(el, ".peer-id", short(p.peer)).title = p.peer;
  set(el, ".role", p.role === "sharer" ? "connects to our share" : "we connect to its share");
  const path = set(el, ".path", p.path || "");
  path.dataset.path = p.path;
  set(el, ".relay-kind", p.relay_kind ? "(" + p.relay_kind + ")" : (p.portmap ? "(portmap " + p.portmap + ")" : ""));
  el.querySelector(".paused").hidden = !p.paused;
  set(el, ".remote", p.remote);
  set(el, ".rtt", ms(p.rtt_ms));
  set(el, ".streams", p.streams);
  set(el, ".punch", p.path === "direct" ? p.punch_ms + " ms, " + p.attempts + " attempts" : "–");
  const pair = p.candidate_pair || {};
  set(el, ".pair", pair.kind ? pair.local + " ↔ " + pair.remote + " (" + pair.kind + ")" : "–");
  set(el, ".nat", (p.nat || "?") + " ↔ " + (p.peer_nat || "?"));
  set(el, ".path-since", ago(p.path_since || p.since));
  set(el, ".relay", p.relay ? p.relay + " (" + bytes(p.relayed_bytes || 0) + " relayed)" : "–");
  traffic(el, el.dataset.key, p.bytes_in, p.bytes_out);
  const hist = p.path_history || [];
  const ol = el.querySelector(".path-history");
  if (ol.dataset.n !== String(hist.length) || (hist.length && ol.dataset.last !== hist[hist.length - 1].at)) {
    ol.replaceChildren(...hist.map(h => {
      const li = document.createElement("li");
      li.className = "move";
      li.dataset.from = h.from;
      li.dataset.to = h.to;
      li.textContent = new Date(h.at).toLocaleTimeString() + "  " + (h.from || "none") + " → " + h.to +
        (h.why ? " — " + h.why : "") + (h.pause_ms ? " (paused " + h.pause_ms + " ms)" : "");
      return li;
    }));
    ol.dataset.n = String(hist.length);
    ol.dataset.last = hist.length ? hist[hist.length - 1].at : "";
  }
}

function fillConnect(el, c) {
  el.dataset.listen = c.listen;
  el.dataset.share = c.share;
  el.dataset.peer = c.peer;
  set(el, ".listen", c.listen || "(not listening)");
  set(el, ".share", c.share);
  set(el, ".peer-id", short(c.peer)).title = c.peer;
  const path = set(el, ".path", c.path || "–");
  path.dataset.path = c.path || "";
  set(el, ".rtt", ms(c.rtt_ms));
  set(el, ".streams", c.streams);
  set(el, ".connections", c.connections);
  set(el, ".error", c.last_error || "");
  traffic(el, el.dataset.key, c.bytes_in, c.bytes_out);
}

function fillRecent(el, c) {
  el.dataset.open = String(!!c.open);
  set(el, ".opened", new Date(c.opened).toLocaleTimeString());
  set(el, ".share", c.share);
  set(el, ".peer-id", short(c.peer)).title = c.peer;
  set(el, ".client", c.client || "");
  set(el, ".path", c.path || "");
  set(el, ".lasted", c.duration_ms < 1000 ? c.duration_ms + " ms" : (c.duration_ms / 1000).toFixed(1) + " s");
  setBytes(el, ".bytes-in", c.bytes_in);
  setBytes(el, ".bytes-out", c.bytes_out);
  set(el, ".end", c.open ? "open" : c.end);
}

function fillBroker(el, b) {
  el.dataset.broker = b.addr;
  el.dataset.connected = String(b.connected);
  set(el, ".addr", b.addr);
  set(el, ".state", b.connected ? "connected" : "disconnected");
  set(el, ".rtt", ms(b.rtt_ms));
  set(el, ".observed", b.observed || "");
  set(el, ".nat", b.nat || "");
  set(el, ".verdict", b.verdict || "");
  set(el, ".reconnects", b.reconnects);
  set(el, ".error", b.last_error || "");
}

let started = null;
function render(st) {
  if (!st) return;
  started = st.started;
  set(document, "#agent-id", st.id);
  set(document, "#agent-version", st.version);
  set(document, "#agent-pid", st.pid);
  set(document, "#uptime", ago(st.started));
  document.title = "peerport " + short(st.id);
  sync(document.getElementById("shares"), "share-tpl", st.shares || [], s => "share/" + s.name, fillShare);
  sync(document.getElementById("peers"), "peer-tpl", st.peers || [], p => "peer/" + p.peer + "/" + p.role, fillPeer);
  sync(document.getElementById("connects"), "connect-tpl", st.connects || [], c => "connect/" + c.listen + "/" + c.share + "/" + c.peer, fillConnect);
  sync(document.getElementById("recent"), "recent-tpl", st.recent || [], c => "conn/" + c.opened + "/" + c.peer + "/" + c.client, fillRecent);
  sync(document.getElementById("brokers"), "broker-tpl", st.brokers || [], b => "broker/" + b.addr, fillBroker);
}

function live(on, text) {
  const el = document.getElementById("live");
  el.className = "live " + (on ? "on" : "off");
  el.dataset.state = on ? "live" : "down";
  el.textContent = text;
  document.body.classList.toggle("stale", !on);
}

document.addEventListener("click", async ev => {
  const btn = ev.target.closest("button.copy");
  if (!btn) return;
  const ticket = btn.closest(".share").querySelector(".ticket").textContent;
  try {
    await navigator.clipboard.writeText(ticket);
  } catch (e) {
    // No clipboard API (an old browser, or no permission): select the
    // ticket so that Ctrl-C copies it.
    const r = document.createRange();
    r.selectNodeContents(btn.closest(".share").querySelector(".ticket"));
    getSelection().removeAllRanges();
    getSelection().addRange(r);
  }
  btn.textContent = "Copied";
  btn.classList.add("done");
  setTimeout(() => { btn.textContent = "Copy"; btn.classList.remove("done"); }, 1500);
});

setInterval(() => { if (started) set(document, "#uptime", ago(started)); }, 1000);

const es = new EventSource("/events");
es.onopen = () => live(true, "live");
es.onerror = () => live(false, es.readyState === EventSource.CLOSED ? "disconnected (reload the page)" : "reconnecting…");
es.onmessage = ev => {
  live(true, "live");
  try { render(JSON.parse(ev.data)); } catch (e) { console.error("dashboard:", e); }
};
