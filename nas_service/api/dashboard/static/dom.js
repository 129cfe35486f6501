// DOM helpers. Every string from the API becomes a text node or an attribute value set through
// the DOM, never markup: graph names and node ids are user input, and nothing here parses HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setAttributes(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
}

/** An HTML element: h("a", {href: "#/jobs", class: "x"}, "text", child, ...). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// ---- formatting --------------------------------------------------------------------------------

const dateTime = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "medium"});
const relative = new Intl.RelativeTimeFormat(undefined, {numeric: "auto"});

export function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : dateTime.format(date);
}

export function formatAgo(iso, now = Date.now()) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "";
  const seconds = Math.round((date.getTime() - now) / 1000);
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [365, "day"]];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(value, unit);
    value = Math.round(value / size);
  }
  return relative.format(value, "year");
}

/** A time element: local date and time, "3 minutes ago" as its tooltip. */
export function timeCell(iso) {
  return h("time", {datetime: iso || null, title: iso ? formatAgo(iso) : null}, formatTime(iso));
}

/** 1234567 -> "1.23 M"; counts of parameters and MACs. */
export function formatCount(n) {
  if (n === null || n === undefined) return "–";
  const abs = Math.abs(n);
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, suffix] of units) {
    if (abs >= size) return `${(n / size).toPrecision(3)} ${suffix}`;
  }
  return String(n);
}

export function formatExact(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

/** A candidate's score as what it measures: an accuracy in [0, 1] as a percentage (0.8312 ->
 * "83.12 %"); a negative score is minus the bits per character of a character task (what its
 * searches maximise), shown as the bits per character: -1.9234 -> "1.923 bpc". */
export function formatScore(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0) return formatBpc(-value);
  return `${(value * 100).toFixed(2)} %`;
}

/** Bits per character (a character task's score.value, lower is better): "1.923 bpc". */
export function formatBpc(value) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(3)} bpc`;
}

/** An architecture's score.value as what it measures: bits per character for predicted-bpc,
 * else an accuracy. */
export function formatScoreValue(score) {
  if (!score) return "–";
  return score.name === "predicted-bpc" ? formatBpc(score.value) : formatScore(score.value);
}

export function formatSeconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return `${(value * 1000).toFixed(0)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

/** A hash route with its parts URL-encoded: route("jobs", id) -> "#/jobs/<id>". */
export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

/** A status pill: queued, running, succeeded, failed, cancelled, scored, rejected. */
export function statusBadge(status) {
  const known = ["queued", "running", "succeeded", "failed", "cancelled", "scored", "rejected"];
  const kind = known.includes(status) ? status : "unknown";
  return h("span", {class: `badge badge-${kind}`}, status ?? "unknown");
}

/** A progress bar; `fraction` in [0, 1]. Its width is set through the CSSOM, which the page's
 * Content Security Policy allows (a style attribute would not be). */
export function progressBar(fraction, label) {
  const fill = h("div", {class: "progress-fill"});
  const bar = h("div", {class: "progress", role: "progressbar", "aria-valuemin": 0,
                        "aria-valuemax": 100},
                fill, h("span", {class: "progress-label"}));
  updateProgress(bar, fraction, label);
  return bar;
}

export function updateProgress(bar, fraction, label) {
  const percent = Math.max(0, Math.min(100, (fraction || 0) * 100));
  bar.querySelector(".progress-fill").style.width = `${percent}%`;
  bar.setAttribute("aria-valuenow", percent.toFixed(0));
  bar.dataset.percent = percent.toFixed(1);
  bar.querySelector(".progress-label").textContent = label ?? `${percent.toFixed(0)} %`;
}

/** A definition list from [label, value] pairs; values may be nodes. `variant`: "two-col"
 * (label-value pairs side by side) or "inline" (one wrapping line of them). */
export function facts(pairs, variant) {
  return h("dl", {class: variant ? `facts ${variant}` : "facts"},
           pairs.filter(Boolean).map(([label, value]) => [h("dt", null, label),
                                                          h("dd", null, value ?? "–")]));
}

/** Download `blob` as `filename` (the API's checkpoint, fetched with the key header). */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", {href: url, download: filename, hidden: true});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
