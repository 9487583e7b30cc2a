// birdsound live dashboard: Server-Sent Events in, a scrolling spectrogram, detections, today's tally, history.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
const $ = (id) => document.getElementById(id);

// a perceptual colour map (dark blue -> magenta -> yellow), 256 entries
const LUT = (() => {
  const stops = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = i / 255 * (stops.length - 1), k = Math.min(Math.floor(x), stops.length - 2), f = x - k;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = stops[k][c] * (1 - f) + stops[k + 1][c] * f;
  }
  return out;
})();

const canvas = $("spec"), ctx = canvas.getContext("2d");
ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);

function drawColumns(msg) {
  const raw = atob(msg.data), n = msg.columns, bins = msg.bins, h = canvas.height;
  ctx.drawImage(canvas, -n, 0);  // scroll left by n pixels
  const img = ctx.createImageData(n, h);
  for (let c = 0; c < n; c++) {
    for (let y = 0; y < h; y++) {
      const b = Math.min(bins - 1, Math.floor((h - 1 - y) * bins / h));  // low frequencies at the bottom
      const v = raw.charCodeAt(c * bins + b), p = (y * n + c) * 4;
      img.data[p] = LUT[v * 3]; img.data[p + 1] = LUT[v * 3 + 1]; img.data[p + 2] = LUT[v * 3 + 2]; img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, canvas.width - n, 0);
}

function item(d, fresh) {
  const li = document.createElement("li");
  if (fresh) li.className = "new";
  const clock = document.createElement("span"); clock.className = "clock"; clock.textContent = d.clock;
  const sp = document.createElement("span"); sp.className = "sp"; sp.textContent = d.common_name;
  const sci = document.createElement("span"); sci.className = "sci"; sci.textContent = d.scientific_name; sp.appendChild(sci);
  const conf = document.createElement("span"); conf.className = "conf"; conf.textContent = (100 * d.confidence).toFixed(0) + " %";
  const btn = document.createElement("button"); btn.className = "play"; btn.textContent = "▶"; btn.title = "play the clip";
  if (d.clip) {
    btn.onclick = () => new Audio(withToken("/v1/clips/" + encodeURIComponent(d.clip))).play();
  } else { btn.disabled = true; btn.title = "no clip (start the server with --clips)"; }
  li.append(clock, sp, conf, btn);
  return li;
}

let todays = [];
function renderTally() {
  const counts = new Map();
  for (const d of todays) {
    const c = counts.get(d.label) || {name: d.common_name, n: 0, best: 0, last: d.clock};
    c.n += 1; c.best = Math.max(c.best, d.confidence); if (d.clock > c.last) c.last = d.clock;
    counts.set(d.label, c);
  }
  const body = $("tally").querySelector("tbody"); body.replaceChildren();
  for (const c of [...counts.values()].sort((a, b) => b.n - a.n || a.name.localeCompare(b.name))) {
    const tr = document.createElement("tr");
    for (const [v, cls] of [[c.name, ""], [c.n, "n"], [(100 * c.best).toFixed(0) + " %", "n"], [c.last, "n"]]) {
      const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

async function loadHistory() {
  const r = await fetch(withToken("/v1/detections?day=today&limit=500"));
  if (!r.ok) return;
  const j = await r.json();
  todays = j.detections.slice();
  const ol = $("history"); ol.replaceChildren(...j.detections.map((d) => item(d, false)));
  renderTally();
}

function setStatus(s) {
  const el = $("status"); el.textContent = s.message || s.state; el.className = "status" + (s.state === "listening" ? "" : " error");
  $("dot").className = "live-dot" + (s.state === "listening" ? " on" : "");
}

async function start() {
  const m = await fetch(withToken("/v1/model"));
  if (m.ok) {
    const j = await m.json();
    $("model").textContent = `${j.model_version} · ${j.labels.length} species`;
    const top = (j.frontend && j.frontend.fmax_hz) || Math.min(15000, j.sample_rate / 2);
    $("range").textContent = `0–${(top / 1000).toFixed(0)} kHz`;
  }
  await loadHistory();
  const es = new EventSource(withToken("/v1/live/events"));
  es.addEventListener("status", (e) => setStatus(JSON.parse(e.data)));
  es.addEventListener("spectrogram", (e) => drawColumns(JSON.parse(e.data)));
  es.addEventListener("detection", (e) => {
    const d = JSON.parse(e.data);
    $("nolive").hidden = true;
    $("live").prepend(item(d, true));
    $("history").prepend(item(d, false));
    todays.push(d); renderTally();
  });
  es.onerror = () => setStatus({state: "disconnected", message: "connection lost; retrying…"});
}
start();
