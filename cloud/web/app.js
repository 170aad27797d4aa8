// The cloud's web dashboard: plain JavaScript over the same /api/v1 endpoints every other client
// uses, with the caller's bearer token, so a city or alliance sees exactly what its role may see.
// The token comes from the login form or from the URL fragment (#token=...), which browsers never
// send to the server; it is kept in sessionStorage (this tab only) and removed from the address bar.
"use strict";

const TOKEN_KEY = "edubrain.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

const $ = (id) => document.getElementById(id);
const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const num = (v, d = 0) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en", { maximumFractionDigits: d }));

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, `${path}: ${resp.status} ${body.error || resp.statusText}`);
  return body;
}

// ---------------------------------------------------------------- charts (SVG, no library)

/** Horizontal bars, one per row, 0-100%, with a dashed target line; bars missing the target are red. */
function barChart(container, rows, { target, higherIsBetter = true }) {
  container.replaceChildren();
  if (!rows.length) return container.append(el("p", { class: "muted" }, "No data in this range."));
  const rowH = 26, left = 120, width = 520, right = 60;
  const h = rows.length * rowH + 30;
  const s = svg("svg", { viewBox: `0 0 ${left + width + right} ${h}`, role: "img", class: "bars" });
  const x = (v) => left + Math.max(0, Math.min(1, v)) * width;
  rows.forEach((r, i) => {
    const y = 10 + i * rowH;
    const ok = r.value === null ? null : higherIsBetter ? r.value >= target : r.value <= target;
    s.append(svg("text", { x: left - 8, y: y + 15, "text-anchor": "end", class: "label" }, r.label));
    if (r.value !== null) {
      const bar = svg("rect", { x: left, y: y + 3, width: Math.max(1, x(r.value) - left), height: rowH - 8, class: ok ? "bar ok" : "bar miss" });
      bar.append(svg("title", {}, `${r.label}: ${pct(r.value)} (target ${pct(target)})`));
      s.append(bar);
    }
    s.append(svg("text", { x: x(r.value ?? 0) + 6, y: y + 15, class: "value" }, pct(r.value)));
  });
  s.append(svg("line", { x1: x(target), x2: x(target), y1: 4, y2: h - 20, class: "target" }));
  s.append(svg("text", { x: x(target), y: h - 6, "text-anchor": "middle", class: "muted" }, `target ${pct(target)}`));
  container.append(s);
}

/** One line per series over shared x labels, 0-100%, with a dashed target line and a legend. */
function lineChart(container, labels, series, { target }) {
  container.replaceChildren();
  if (!labels.length || !series.length) return container.append(el("p", { class: "muted" }, "No data in this range."));
  const left = 50, top = 10, width = 700, height = 240;
  const max = Math.min(1, Math.max(target, ...series.flatMap((s) => s.values.filter((v) => v !== null))) * 1.15);
  const x = (i) => left + (labels.length === 1 ? width / 2 : (i * width) / (labels.length - 1));
  const y = (v) => top + height - (v / max) * height;
  const s = svg("svg", { viewBox: `0 0 ${left + width + 150} ${top + height + 40}`, role: "img", class: "lines" });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    s.append(svg("line", { x1: left, x2: left + width, y1: y(v), y2: y(v), class: "grid" }));
    s.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "muted" }, pct(v)));
  }
  labels.forEach((l, i) => s.append(svg("text", { x: x(i), y: top + height + 18, "text-anchor": "middle", class: "muted" }, l)));
  s.append(svg("line", { x1: left, x2: left + width, y1: y(target), y2: y(target), class: "target" }));
  series.forEach((ser, n) => {
    const color = PALETTE[n % PALETTE.length];
    const pts = ser.values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
    s.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2, class: "series" }));
    ser.values.forEach((v, i) => {
      if (v === null) return;
      const dot = svg("circle", { cx: x(i), cy: y(v), r: 3, fill: color });
      dot.append(svg("title", {}, `${ser.name} ${labels[i]}: ${pct(v)}`));
      s.append(dot);
    });
    s.append(svg("rect", { x: left + width + 20, y: top + n * 20, width: 12, height: 12, fill: color }));
    s.append(svg("text", { x: left + width + 38, y: top + n * 20 + 11, class: "label" }, ser.name));
  });
  container.append(s);
}

function table(t, head, rows) {
  t.replaceChildren(el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}

// ---------------------------------------------------------------- views

const state = { lastDay: null, schools: [] };

async function loadOverview() {
  const s = await api("/api/v1/summary");
  const span = s.events || {};
  state.lastDay = span.last_day || null;
  $("range").textContent = span.first_day ? `${span.first_day} to ${span.last_day}` : "no events yet";
  const rows = s.utilisation_by_alliance || [];
  const avg = (f) => {
    const v = rows.map((r) => r[f].value).filter((v) => v !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  };
  const kpis = [
    ["Events", num(span.events)],
    ["Schools reporting", num(span.schools)],
    ["Utilisation (alliance mean)", pct(avg("utilisation"))],
    ["Idle rate (alliance mean)", pct(avg("idle_rate"))],
    ["Indicators over CV limit", num((s.largest_gaps || []).length)],
  ];
  $("kpis").replaceChildren(...kpis.map(([k, v]) => el("div", { class: "kpi" }, el("div", { class: "kpi-value" }, v), el("div", { class: "kpi-label" }, k))));
  const t = s.thresholds;
  barChart($("chart-utilisation"), rows.map((r) => ({ label: r.group, value: r.utilisation.value })), { target: t.utilisation_target });
  barChart($("chart-idle"), rows.map((r) => ({ label: r.group, value: r.idle_rate.value })), { target: t.idle_rate_target, higherIsBetter: false });
  table(
    $("largest-gaps"),
    ["scope", "group", "level", "indicator", "CV", "limit"],
    (s.largest_gaps || []).map((g) => el("tr", { class: "miss" }, el("td", {}, g.scope), el("td", {}, g.group), el("td", {}, g.level), el("td", {}, g.indicator), el("td", { class: "num" }, g.cv.toFixed(3)), el("td", { class: "num" }, g.threshold.toFixed(2)))),
  );
}

async function loadGaps() {
  const scope = $("gap-scope").value;
  const g = await api(`/api/v1/gaps?scope=${encodeURIComponent(scope)}`);
  const cv = g.cv || [];
  const indicators = [...new Set(cv.map((r) => r.indicator))];
  const groups = new Map();
  for (const r of cv) {
    const key = `${r.group}|${r.level}`;
    if (!groups.has(key)) groups.set(key, { group: r.group, level: r.level, schools: r.schools, cells: {}, over: 0 });
    const row = groups.get(key);
    row.cells[r.indicator] = r;
    if (!r.meets) row.over += 1;
  }
  const ranked = [...groups.values()].sort((a, b) => b.over - a.over || a.group.localeCompare(b.group) || a.level.localeCompare(b.level));
  table(
    $("gap-table"),
    ["#", scope, "level", "schools", "over limit", ...indicators],
    ranked.map((r, i) =>
      el("tr", {}, el("td", {}, i + 1), el("td", {}, r.group), el("td", {}, r.level), el("td", { class: "num" }, r.schools), el("td", { class: r.over ? "num miss" : "num ok" }, r.over),
        indicators.map((ind) => {
          const c = r.cells[ind];
          return c ? el("td", { class: c.meets ? "num ok" : "num miss", title: `CV ${c.cv.toFixed(3)}, limit ${c.threshold}` }, c.cv.toFixed(2)) : el("td", {}, "–");
        })),
    ),
  );
  const senior = (g.senior_title || []).filter((r) => r.scope === scope || scope === "province");
  const limit = senior.length ? senior[0].threshold_pp / 100 : 0.08;
  barChart($("chart-senior"), senior.map((r) => ({ label: r.group, value: r.gap_pp / 100 })), { target: limit, higherIsBetter: false });
}

function addDays(iso, n) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

async function loadTrends() {
  if (!state.lastDay) return lineChart($("chart-trend"), [], [], { target: 0.7 });
  const weeks = [];
  for (let w = 7; w >= 0; w--) weeks.push({ from: addDays(state.lastDay, -7 * w - 6), to: addDays(state.lastDay, -7 * w) });
  const answers = await Promise.all(weeks.map((w) => api(`/api/v1/utilisation?by=alliance&from=${w.from}&to=${w.to}`)));
  const names = [...new Set(answers.flat().map((r) => r.group))].sort();
  const target = answers.flat()[0]?.utilisation.target ?? 0.7;
  const series = names.map((name) => ({ name, values: answers.map((rows) => rows.find((r) => r.group === name)?.utilisation.value ?? null) }));
  const keep = weeks.map((_, i) => series.some((s) => s.values[i] !== null));
  const first = keep.indexOf(true);
  const from = first < 0 ? weeks.length : first;
  lineChart($("chart-trend"), weeks.slice(from).map((w) => w.to.slice(5)), series.map((s) => ({ ...s, values: s.values.slice(from) })), { target });
}

async function loadZones() {
  const z = await api("/api/v1/zones");
  const alerts = z.alerts || [];
  $("zone-alerts").replaceChildren(
    alerts.length
      ? el("ul", { class: "alerts" }, alerts.map((a) => el("li", {}, el("strong", {}, `${a.zone} ${a.period}: `), a.message)))
      : el("p", { class: "ok" }, "No zone alerts."),
  );
  const months = z.months || [];
  const newest = months.map((m) => m.month).sort().pop();
  barChart(
    $("chart-zone-visits"),
    months.filter((m) => m.month === newest).map((m) => ({ label: m.zone, value: m.visits_per_school.value === null ? null : m.visits_per_school.value / (z.targets.visits_per_school_per_month * 2) })),
    { target: 0.5 },
  );
  $("chart-zone-visits").append(el("p", { class: "muted" }, `Bar scale: 0 to ${z.targets.visits_per_school_per_month * 2} visits; the line is the target of ${z.targets.visits_per_school_per_month}.`));
  table(
    $("zone-months"),
    ["zone", "month", "schools", "visits / school", "download rate"],
    months.map((m) => el("tr", {}, el("td", {}, m.zone), el("td", {}, m.month), el("td", { class: "num" }, m.schools),
      el("td", { class: m.visits_per_school.meets === false ? "num miss" : "num" }, num(m.visits_per_school.value, 1)),
      el("td", { class: m.download_rate.meets === false ? "num miss" : "num" }, pct(m.download_rate.value)))),
  );
}

async function loadSchool() {
  const school = $("school-select").value;
  if (!school) return;
  const [rows, recs] = await Promise.all([api("/api/v1/utilisation?by=school"), api(`/api/v1/recommendations?school=${encodeURIComponent(school)}`)]);
  const row = rows.find((r) => r.group === school);
  const rates = row ? [["Utilisation", row.utilisation], ["Idle", row.idle_rate], ["Booking no-show", row.booking_no_show_rate], ["Live interruption", row.live_interruption_rate], ["Resource sharing", row.resource_sharing_rate], ["Upload pass", row.upload_pass_rate]] : [];
  $("school-detail").replaceChildren(
    row
      ? el(
          "div",
          { class: "kpis" },
          rates.map(([k, r]) => el("div", { class: r.meets === false ? "kpi miss" : "kpi" }, el("div", { class: "kpi-value" }, pct(r.value)), el("div", { class: "kpi-label" }, `${k} (target ${pct(r.target)})`))),
          // The plans set no target for the course supermarket's share: the counts stand beside it.
          row.cross_school_electives
            ? el("div", { class: "kpi" }, el("div", { class: "kpi-value" }, pct(row.cross_school_electives.share)), el("div", { class: "kpi-label" }, `Cross-school electives (${row.cross_school_electives.cross_school} of ${row.cross_school_electives.enrolments} enrolments)`))
            : [],
        )
      : el("p", { class: "muted" }, "No equipment use recorded for this school in the range."),
  );
  const w = recs.weights || {};
  table(
    $("recommendations"),
    ["#", "resource", "kind", "subject", "from school", "score", "parts", "why"],
    (recs.recommendations || []).map((r, i) => {
      const parts = [["gap", r.parts.gap * (w.gap ?? 1)], ["quality", r.parts.quality * (w.quality ?? 1)], ["reuse", r.parts.reuse * (w.reuse ?? 1)], ["proximity", r.parts.proximity * (w.proximity ?? 1)]];
      const total = parts.reduce((a, [, v]) => a + v, 0) || 1;
      const bar = svg("svg", { viewBox: "0 0 120 12", class: "parts", role: "img" });
      let x0 = 0;
      parts.forEach(([name, v], n) => {
        const wpx = (v / total) * 120;
        const r = svg("rect", { x: x0, y: 0, width: wpx, height: 12, fill: PALETTE[n] });
        r.append(svg("title", {}, `${name}: ${v.toFixed(3)}`));
        bar.append(r);
        x0 += wpx;
      });
      const cell = el("td");
      cell.append(bar);
      return el("tr", {}, el("td", {}, i + 1), el("td", {}, r.resource_id), el("td", {}, r.kind), el("td", {}, r.subject), el("td", {}, r.owner_school), el("td", { class: "num" }, r.score.toFixed(3)), cell, el("td", { class: "why" }, r.why));
    }),
  );
}

async function start() {
  const who = await api("/api/v1/whoami");
  const role = who.role.scope ? `${who.role.role} ${who.role.scope}` : who.role.role;
  $("who").textContent = `${who.name} · ${role} · ${who.schools.length} schools`;
  state.schools = who.schools;
  $("school-select").replaceChildren(...who.schools.map((s) => el("option", { value: s }, s)));
  $("login").hidden = true;
  $("app").hidden = false;
  const run = (f) => f().catch((e) => ($("error").textContent = e.message));
  await run(loadOverview);
  await Promise.all([run(loadGaps), run(loadTrends), run(loadZones), run(loadSchool)]);
  document.body.dataset.ready = "true";
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  document.body.dataset.ready = "login";
}

async function enter() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  try {
    await start();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin("That token was not accepted.");
    }
    $("error").textContent = e.message;
    document.body.dataset.ready = "error";
  }
}

function boot() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    enter();
  });
  $("gap-scope").addEventListener("change", () => loadGaps().catch((e) => ($("error").textContent = e.message)));
  $("school-select").addEventListener("change", () => loadSchool().catch((e) => ($("error").textContent = e.message)));
  enter();
}

document.addEventListener("DOMContentLoaded", boot, { once: true });
