// The job page's scatter plot: each candidate's score (what the search ranks by: the ranking
// head's estimate of trained accuracy, or the predicted accuracy) against parameters (or FLOPs),
// drawn as SVG, with the Pareto front (highest score for its size: nothing both smaller and at
// least as well scored) highlighted. Points link to their candidate pages.

import {formatCount, route, s} from "./dom.js";
import {describeScore, scoreLabels} from "./scores.js";

const WIDTH = 720;
const HEIGHT = 380;
const PAD = {left: 80, right: 20, top: 16, bottom: 48};

/** The points of `points` ({x, y}) on the Pareto front of maximal y and minimal x, in order of
 * x: a point is on it when every point with a smaller or equal x has a smaller y (ties on x:
 * the best y only; exact duplicates: the first). */
export function paretoFront(points) {
  const sorted = [...points].sort((a, b) => a.x - b.x || b.y - a.y);
  const front = [];
  let best = -Infinity;
  for (const p of sorted) {
    if (p.y > best) {
      front.push(p);
      best = p.y;
    }
  }
  return front;
}

/** "Nice" tick values spanning [lo, hi] (about `count` of them). */
function linearTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((v) => v >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo && v <= hi) ticks.push(v);
    }
  }
  return ticks;
}

/** Scale of the x axis: logarithmic when the values span more than a factor 20 (parameters
 * and FLOPs usually do), else linear. */
/** An accuracy tick as a percentage with as many decimals as the tick step needs. */
function percentTick(value, ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) * 100 : 1;
  let decimals = 0;
  while (decimals < 3 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) {
    decimals++;
  }
  return `${(value * 100).toFixed(decimals)} %`;
}

function xScale(values) {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const left = PAD.left;
  const width = WIDTH - PAD.left - PAD.right;
  if (lo > 0 && hi / lo > 20) {
    const a = Math.log10(lo) - 0.05;
    const b = Math.log10(hi) + 0.05;
    return {log: true, map: (v) => left + ((Math.log10(v) - a) / (b - a)) * width,
            ticks: logTicks(10 ** a, 10 ** b)};
  }
  const pad = (hi - lo) * 0.05 || Math.max(1, hi * 0.05);
  const a = Math.max(0, lo - pad);
  const b = hi + pad;
  return {log: false, map: (v) => left + ((v - a) / (b - a)) * width, ticks: linearTicks(a, b, 6)};
}

function yScale(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const pad = (hi - lo) * 0.08 || 0.01;
  lo = Math.max(0, lo - pad);
  hi = Math.min(1, hi + pad);
  if (hi <= lo) hi = lo + 0.01;
  const top = PAD.top;
  const height = HEIGHT - PAD.top - PAD.bottom;
  return {map: (v) => top + (1 - (v - lo) / (hi - lo)) * height, ticks: linearTicks(lo, hi, 6)};
}

/** The plot of the scored `candidates` (API candidate objects) with `metric` on x:
 * "num_parameters" or "flops", and the score on y, named by `labels` (scoreLabels of the
 * candidates' kind). Empty candidates give an empty frame with a note. */
export function renderScatter(candidates, metric, labels = scoreLabels(null)) {
  const label = metric === "flops" ? "FLOPs (multiply-accumulates per sample)" : "parameters";
  const points = candidates
    .filter((c) => c.status === "scored" && typeof c.score === "number"
                   && typeof c[metric] === "number")
    .map((c) => ({x: c[metric], y: c.score, candidate: c}));
  const svg = s("svg", {class: "scatter", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "group",
                        "aria-label": `${labels.name} against ${label}`,
                        dataset: {points: points.length, metric}});
  const plotBottom = HEIGHT - PAD.bottom;
  svg.append(s("rect", {class: "plot-area", x: PAD.left, y: PAD.top,
                        width: WIDTH - PAD.left - PAD.right, height: plotBottom - PAD.top}));
  svg.append(s("text", {class: "axis-title", x: PAD.left + (WIDTH - PAD.left - PAD.right) / 2,
                        y: HEIGHT - 8}, label));
  svg.append(s("text", {class: "axis-title y-title",
                        transform: `translate(14,${(PAD.top + plotBottom) / 2}) rotate(-90)`},
               labels.name, s("title", null, labels.title)));
  if (!points.length) {
    svg.append(s("text", {class: "empty-note", x: WIDTH / 2, y: HEIGHT / 2},
                 "No scored candidates yet"));
    return {element: svg, points: 0, front: 0};
  }
  const x = xScale(points.map((p) => p.x));
  const y = yScale(points.map((p) => p.y));

  const grid = s("g", {class: "grid"});
  for (const t of x.ticks) {
    const px = x.map(t);
    if (px < PAD.left - 0.5 || px > WIDTH - PAD.right + 0.5) continue;
    grid.append(s("line", {x1: px, x2: px, y1: PAD.top, y2: plotBottom}),
                s("text", {class: "tick tick-x", x: px, y: plotBottom + 16}, formatCount(t)));
  }
  for (const t of y.ticks) {
    const py = y.map(t);
    if (py < PAD.top - 0.5 || py > plotBottom + 0.5) continue;
    grid.append(s("line", {x1: PAD.left, x2: WIDTH - PAD.right, y1: py, y2: py}),
                s("text", {class: "tick tick-y", x: PAD.left - 6, y: py + 4}, percentTick(t, y.ticks)));
  }
  svg.append(grid);

  const front = paretoFront(points);
  const onFront = new Set(front);
  // The front as a staircase: each point holds its score until the next, larger one.
  if (front.length > 1) {
    let d = "";
    front.forEach((p, i) => {
      const px = x.map(p.x);
      const py = y.map(p.y);
      d += i === 0 ? `M${px},${py}` : ` H${px} V${py}`;
    });
    svg.append(s("path", {class: "pareto-line", d}));
  }
  const dots = s("g", {class: "points"});
  // Front points last, so they sit on top.
  for (const p of [...points.filter((q) => !onFront.has(q)), ...front]) {
    const c = p.candidate;
    const pareto = onFront.has(p);
    const link = s("a", {href: route("candidates", c.id), class: "point-link"},
      s("circle", {class: pareto ? "point pareto" : "point", cx: x.map(p.x), cy: y.map(p.y),
                   r: pareto ? 6 : 4.5, dataset: {candidateId: c.id, index: c.index}},
        s("title", null, `candidate ${c.index}: ${describeScore(c)}, `
                         + `${formatCount(c.num_parameters)} parameters, ${formatCount(c.flops)} FLOPs`
                         + (pareto ? " (Pareto front)" : ""))));
    dots.append(link);
  }
  svg.append(dots);
  return {element: svg, points: points.length, front: front.length};
}
