// An architecture graph (nas-graph/1) drawn as an SVG picture: a layered layout by topological
// depth, computed here from the graph JSON, nodes coloured by op, a legend, zoom and pan.
//
// Layout (layoutGraph, pure, no DOM):
//   1. layers: a node's layer is its depth, the longest path from a source (so every edge goes
//      down at least one layer);
//   2. order within layers: barycenter sweeps, down (by predecessors) and up (by successors),
//      which untangles most crossings of the chains and branches these graphs are made of;
//   3. x positions: each node pulled towards the mean x of its neighbours, the layer then packed
//      left to right with a minimum gap, so a chain stays straight and a branch fans out.
//   An edge that skips layers gets a narrow virtual node in each layer it crosses (Sugiyama's
//   dummy nodes), so it is ordered and placed like the rest and runs beside the nodes it skips.

import {h, s} from "./dom.js";

export const NODE_WIDTH = 150;
export const NODE_HEIGHT = 36;
const LAYER_GAP = 30;
const NODE_GAP = 26;
const DUMMY_WIDTH = 6;
const DUMMY_GAP = 8;
const MARGIN = 24;
const ORDER_SWEEPS = 6;
const PLACE_SWEEPS = 4;

// Fill colours by op, grouped by kind: inputs and outputs slate, convolutions blue, linear violet,
// normalisation green, activations warm, pooling purple, merges pink, reshapes grey, token ops
// teal. The order is the format's op order (docs/graph-format.md, section 4).
export const OP_COLORS = {
  input: "#cbd5e1", output: "#94a3b8",
  conv2d: "#93c5fd", linear: "#c4b5fd",
  batch_norm: "#86efac", layer_norm: "#bbf7d0", group_norm: "#6ee7b7",
  relu: "#fdba74", relu6: "#fed7aa", leaky_relu: "#fb923c", elu: "#fcd34d", gelu: "#fde68a",
  silu: "#facc15", mish: "#fef08a", tanh: "#fca5a5", sigmoid: "#fecaca", hardswish: "#f59e0b",
  hardsigmoid: "#fdba8c",
  max_pool: "#d8b4fe", avg_pool: "#e9d5ff", adaptive_avg_pool: "#f0abfc",
  global_avg_pool: "#c084fc", global_max_pool: "#e879f9",
  add: "#f472b6", mul: "#fb7185", concat: "#f9a8d4",
  flatten: "#e5e7eb", dropout: "#d1d5db", identity: "#f3f4f6",
  patch_embed: "#a5b4fc", to_tokens: "#5eead4", class_token: "#99f6e4", pos_embed: "#67e8f9",
  self_attention: "#22d3ee", select_token: "#a5f3fc",
  scale: "#fda4af", slice: "#d4d4d8", upsample: "#f5d0fe", conv1d: "#bfdbfe",
  conv_transpose2d: "#60a5fa", std_conv2d: "#3b82f6", prelu: "#ea580c", recurrent: "#a78bfa",
  embedding: "#2dd4bf", pad: "#e4e4e7", sub: "#ec4899", reshape: "#d6d3d1", permute: "#a8a29e",
  opaque: "#64748b", rhn: "#8b5cf6", hyper_lstm: "#7c3aed", hyper_rhn: "#6d28d9",
};
const OP_ORDER = Object.keys(OP_COLORS);

/** The fill of an op; an op this file does not know (a newer format) gets a stable colour from
 * its name. */
export function opColor(op) {
  if (Object.hasOwn(OP_COLORS, op)) return OP_COLORS[op];
  let hash = 0;
  for (const ch of String(op)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360}, 70%, 80%)`;
}

/** A darker shade of a "#rrggbb" fill, for the node's border. */
function strokeOf(fill) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(fill);
  if (!m) return "#475569";
  const dark = (hex) => Math.round(parseInt(hex, 16) * 0.55).toString(16).padStart(2, "0");
  return `#${dark(m[1])}${dark(m[2])}${dark(m[3])}`;
}

// ---- layout ------------------------------------------------------------------------------------

/** Positions for every node of `doc` (a nas-graph/1 document):
 * {nodes: [{id, op, index, layer, x, y, width, data}], edges: [{from, to, span, via}], width,
 *  height, layers}. x, y are centres. An edge that skips layers runs through `via`, one virtual
 * node per layer it crosses: they take part in the ordering and placement like real nodes
 * (narrow ones), which is what keeps long edges from running through the nodes they pass. */
export function layoutGraph(doc) {
  const raw = Array.isArray(doc && doc.nodes) ? doc.nodes : [];
  const nodes = raw.map((data, index) => ({
    id: String(data && data.id !== undefined ? data.id : `#${index}`),
    op: String(data && data.op !== undefined ? data.op : "?"), index, data, virtual: false,
    width: NODE_WIDTH, preds: [], succs: [], up: [], down: [], layer: 0, x: 0, y: 0,
  }));
  const byId = new Map();
  for (const node of nodes) if (!byId.has(node.id)) byId.set(node.id, node);
  const edges = [];
  const seen = new Set();
  for (const node of nodes) {
    const inputs = Array.isArray(node.data && node.data.inputs) ? node.data.inputs : [];
    for (const input of inputs) {
      const source = byId.get(String(input));
      const key = `${source && source.index}>${node.index}`;
      if (!source || source === node || seen.has(key)) continue;  // add(x, x) draws one edge
      seen.add(key);
      source.succs.push(node);
      node.preds.push(source);
      edges.push({from: source, to: node, span: 0, via: []});
    }
  }

  // 1. Layers by longest path, in topological order (Kahn; ties by position in the document).
  const indegree = new Map(nodes.map((n) => [n, n.preds.length]));
  const ready = nodes.filter((n) => n.preds.length === 0);
  const order = [];
  while (ready.length) {
    ready.sort((a, b) => a.index - b.index);
    const node = ready.shift();
    order.push(node);
    for (const next of node.succs) {
      indegree.set(next, indegree.get(next) - 1);
      if (indegree.get(next) === 0) ready.push(next);
    }
  }
  // A document with a cycle is never returned by the API; should one arrive, its remaining
  // nodes go below the rest, one per layer, rather than loop forever.
  const sorted = new Set(order);
  let depth = 0;
  for (const node of order) {
    node.layer = node.preds.reduce((d, p) => Math.max(d, p.layer + 1), 0);
    depth = Math.max(depth, node.layer);
  }
  for (const node of nodes) {
    if (!sorted.has(node)) {
      node.layer = ++depth;
      order.push(node);
    }
  }
  const layers = Array.from({length: depth + 1}, () => []);
  for (const node of order) layers[node.layer].push(node);

  // Virtual nodes on edges that skip layers; `up`/`down` link each node to its neighbours in
  // the layers just above and below. An edge against the layer order (a cycle) is drawn
  // directly and not laid out.
  for (const edge of edges) {
    edge.span = edge.to.layer - edge.from.layer;
    let previous = edge.from;
    for (let layer = edge.from.layer + 1; layer < edge.to.layer; layer++) {
      const dummy = {virtual: true, layer, index: edge.from.index + 0.5, width: DUMMY_WIDTH,
                     up: [previous], down: [], x: 0, y: 0};
      previous.down.push(dummy);
      layers[layer].push(dummy);
      edge.via.push(dummy);
      previous = dummy;
    }
    if (edge.span > 0) {
      previous.down.push(edge.to);
      edge.to.up.push(previous);
    }
  }

  // 2. Order within layers: barycenter sweeps on the nodes' relative positions.
  const position = new Map();
  const setPositions = (layer) => layer.forEach((n, i) => position.set(n, i - (layer.length - 1) / 2));
  layers.forEach(setPositions);
  const sortBy = (layer, neighbours) => {
    const key = new Map(layer.map((n) => {
      const near = neighbours(n);
      return [n, near.length ? near.reduce((sum, m) => sum + position.get(m), 0) / near.length
                             : position.get(n)];
    }));
    layer.sort((a, b) => key.get(a) - key.get(b) || a.index - b.index);
    setPositions(layer);
  };
  for (let sweep = 0; sweep < ORDER_SWEEPS; sweep++) {
    for (let i = 1; i < layers.length; i++) sortBy(layers[i], (n) => n.up);
    for (let i = layers.length - 2; i >= 0; i--) sortBy(layers[i], (n) => n.down);
  }

  // 3. x: towards the neighbours' mean, packed left to right with the minimum gaps, then the
  // whole layer shifted so that on average it sits where its neighbours want it.
  const gap = (a, b) => (a.width + b.width) / 2 + (a.virtual || b.virtual ? DUMMY_GAP : NODE_GAP);
  const pack = (layer, desired) => {
    const xs = [];
    for (let i = 0; i < layer.length; i++) {
      xs.push(i ? Math.max(desired[i], xs[i - 1] + gap(layer[i - 1], layer[i])) : desired[i]);
    }
    const shift = desired.reduce((sum, d, i) => sum + d - xs[i], 0) / layer.length;
    layer.forEach((n, i) => { n.x = xs[i] + shift; });
  };
  for (const layer of layers) pack(layer, layer.map(() => 0));
  const place = (layer, neighbours) => pack(layer, layer.map((n) => {
    const near = neighbours(n);
    return near.length ? near.reduce((sum, m) => sum + m.x, 0) / near.length : n.x;
  }));
  for (let sweep = 0; sweep < PLACE_SWEEPS; sweep++) {
    for (let i = 1; i < layers.length; i++) place(layers[i], (n) => n.up);
    for (let i = layers.length - 2; i >= 0; i--) place(layers[i], (n) => n.down);
  }
  for (let i = 1; i < layers.length; i++) place(layers[i], (n) => n.up);

  const everything = layers.flat();
  const minX = Math.min(...everything.map((n) => n.x - n.width / 2), 0);
  const maxX = Math.max(...everything.map((n) => n.x + n.width / 2), 0);
  for (const node of everything) {
    node.x = node.x - minX + MARGIN;
    node.y = MARGIN + node.layer * (NODE_HEIGHT + LAYER_GAP) + NODE_HEIGHT / 2;
  }
  return {
    nodes, edges, layers: layers.length,
    width: nodes.length ? maxX - minX + 2 * MARGIN : 2 * MARGIN,
    height: nodes.length ? layers.length * (NODE_HEIGHT + LAYER_GAP) - LAYER_GAP + 2 * MARGIN
                         : 2 * MARGIN,
  };
}

/** The SVG path of an edge: from the bottom of its source, straight through the band of each
 * layer it crosses, to the top of its target, with S-curves between layers. */
export function edgePath(edge) {
  const points = [[edge.from.x, edge.from.y + NODE_HEIGHT / 2]];
  for (const v of edge.via) points.push([v.x, v.y - NODE_HEIGHT / 2], [v.x, v.y + NODE_HEIGHT / 2]);
  points.push([edge.to.x, edge.to.y - NODE_HEIGHT / 2]);
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    if (i % 2 === 0) {
      d += ` L${x1},${y1}`;  // through a crossed layer
    } else {
      const mid = (y0 + y1) / 2;
      d += ` C${x0},${mid} ${x1},${mid} ${x1},${y1}`;
    }
  }
  return d;
}

// ---- rendering ---------------------------------------------------------------------------------

let graphCount = 0;

function truncate(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function attributes(data) {
  if (!data || typeof data !== "object") return [];
  return Object.entries(data).filter(([key]) => !["id", "op", "inputs"].includes(key));
}

function nodeTitle(node) {
  const attrs = attributes(node.data).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  return `${node.id} (${node.op})${attrs ? `\n${attrs}` : ""}`;
}

/** The picture of `doc` with its legend, zoom controls and a node details panel. */
export function renderGraph(doc) {
  const layout = layoutGraph(doc);
  const uid = `g${++graphCount}`;
  let zoom = 1;

  const edgeLayer = s("g", {class: "edges"},
    layout.edges.map((edge) => s("path", {class: edge.span > 1 ? "edge edge-skip" : "edge",
                                          d: edgePath(edge), "marker-end": `url(#${uid}-arrow)`})));
  const nodeLayer = s("g", {class: "nodes"}, layout.nodes.map((node) => {
    const fill = opColor(node.op);
    return s("g", {class: "node", tabindex: 0, role: "button",
                   transform: `translate(${node.x - NODE_WIDTH / 2},${node.y - NODE_HEIGHT / 2})`,
                   dataset: {nodeId: node.id, op: node.op}},
      s("title", null, nodeTitle(node)),
      s("rect", {width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6, fill, stroke: strokeOf(fill)}),
      s("text", {x: NODE_WIDTH / 2, y: 15, class: "node-op"}, truncate(node.op, 22)),
      s("text", {x: NODE_WIDTH / 2, y: 29, class: "node-id"}, truncate(node.id, 24)));
  }));
  const svg = s("svg", {class: "graph-svg", xmlns: "http://www.w3.org/2000/svg",
                        viewBox: `0 0 ${layout.width} ${layout.height}`, role: "img",
                        "aria-label": `architecture graph: ${layout.nodes.length} nodes, `
                                      + `${layout.edges.length} edges, ${layout.layers} layers`,
                        dataset: {nodes: layout.nodes.length, edges: layout.edges.length}},
    s("defs", null, s("marker", {id: `${uid}-arrow`, viewBox: "0 0 10 10", refX: 9, refY: 5,
                                 markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"},
                      s("path", {d: "M0,0 L10,5 L0,10 z", class: "arrow"}))),
    edgeLayer, nodeLayer);

  const scroller = h("div", {class: "graph-scroll", tabindex: 0,
                             "aria-label": "Graph; Ctrl + wheel zooms, drag pans"}, svg);
  const zoomLabel = h("span", {class: "zoom-label"}, "100 %");
  const setZoom = (value, anchor) => {
    const next = Math.min(4, Math.max(0.1, value));
    const rect = scroller.getBoundingClientRect();
    const ax = anchor ? anchor.x - rect.left : scroller.clientWidth / 2;
    const ay = anchor ? anchor.y - rect.top : scroller.clientHeight / 2;
    // Keep the point under the anchor (the pointer, else the centre) where it is.
    const gx = (scroller.scrollLeft + ax) / zoom;
    const gy = (scroller.scrollTop + ay) / zoom;
    zoom = next;
    svg.setAttribute("width", String(Math.round(layout.width * zoom)));
    svg.setAttribute("height", String(Math.round(layout.height * zoom)));
    scroller.scrollLeft = gx * zoom - ax;
    scroller.scrollTop = gy * zoom - ay;
    zoomLabel.textContent = `${Math.round(zoom * 100)} %`;
  };
  const fitWidth = () => {
    const available = scroller.clientWidth - 4;
    setZoom(available > 0 ? Math.min(1, available / layout.width) : 1);
  };
  setZoom(1);

  scroller.addEventListener("wheel", (event) => {
    if (!event.ctrlKey && !event.metaKey) return;  // plain wheel scrolls
    event.preventDefault();
    setZoom(zoom * Math.exp(-event.deltaY * 0.0015), {x: event.clientX, y: event.clientY});
  }, {passive: false});
  let drag = null;
  scroller.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || event.target.closest(".node")) return;
    drag = {x: event.clientX, y: event.clientY, left: scroller.scrollLeft, top: scroller.scrollTop};
    scroller.setPointerCapture(event.pointerId);
    scroller.classList.add("dragging");
  });
  scroller.addEventListener("pointermove", (event) => {
    if (!drag) return;
    scroller.scrollLeft = drag.left - (event.clientX - drag.x);
    scroller.scrollTop = drag.top - (event.clientY - drag.y);
  });
  const endDrag = () => { drag = null; scroller.classList.remove("dragging"); };
  scroller.addEventListener("pointerup", endDrag);
  scroller.addEventListener("pointercancel", endDrag);

  // Details of the selected node, as text.
  const details = h("div", {class: "node-details", "aria-live": "polite"},
                    h("p", {class: "muted"}, "Select a node to see its attributes."));
  const select = (g) => {
    for (const old of nodeLayer.querySelectorAll(".node.selected")) old.classList.remove("selected");
    g.classList.add("selected");
    const node = layout.nodes.find((n) => n.id === g.dataset.nodeId);
    if (!node) return;
    details.replaceChildren(
      h("p", null, h("strong", null, node.id), " ", h("span", {class: "op-chip"}, node.op)),
      h("dl", {class: "facts compact"},
        h("dt", null, "inputs"), h("dd", null, node.preds.map((p) => p.id).join(", ") || "–"),
        h("dt", null, "layer"), h("dd", null, String(node.layer)),
        attributes(node.data).map(([k, v]) => [h("dt", null, k), h("dd", null, JSON.stringify(v))])));
  };
  nodeLayer.addEventListener("click", (event) => {
    const g = event.target.closest(".node");
    if (g) select(g);
  });
  nodeLayer.addEventListener("keydown", (event) => {
    const g = event.target.closest(".node");
    if (g && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      select(g);
    }
  });

  // Legend: the ops present, in the format's order, with counts; a click highlights them.
  const counts = new Map();
  for (const node of layout.nodes) counts.set(node.op, (counts.get(node.op) || 0) + 1);
  const ops = [...counts.keys()].sort((a, b) => {
    const ia = OP_ORDER.indexOf(a);
    const ib = OP_ORDER.indexOf(b);
    return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || a.localeCompare(b);
  });
  const legend = h("ul", {class: "legend", "aria-label": "Ops"}, ops.map((op) => {
    const fill = opColor(op);
    const swatch = h("span", {class: "swatch"});
    swatch.style.background = fill;
    swatch.style.borderColor = strokeOf(fill);
    const item = h("li", null, h("button", {type: "button", class: "legend-item", dataset: {op},
                                            "aria-pressed": "false"},
      swatch, op, h("span", {class: "muted"}, ` ${counts.get(op)}`)));
    return item;
  }));
  legend.addEventListener("click", (event) => {
    const button = event.target.closest(".legend-item");
    if (!button) return;
    const on = button.getAttribute("aria-pressed") !== "true";
    for (const b of legend.querySelectorAll(".legend-item")) b.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-pressed", String(on));
    svg.classList.toggle("highlighting", on);
    for (const g of nodeLayer.querySelectorAll(".node")) {
      g.classList.toggle("highlight", on && g.dataset.op === button.dataset.op);
    }
  });

  const toolbar = h("div", {class: "graph-toolbar"},
    h("button", {type: "button", title: "Zoom out", "aria-label": "Zoom out",
                 dataset: {zoom: "out"}, onclick: () => setZoom(zoom / 1.25)}, "−"),
    zoomLabel,
    h("button", {type: "button", title: "Zoom in", "aria-label": "Zoom in",
                 dataset: {zoom: "in"}, onclick: () => setZoom(zoom * 1.25)}, "+"),
    h("button", {type: "button", dataset: {zoom: "fit"}, onclick: fitWidth}, "Fit width"),
    h("button", {type: "button", dataset: {zoom: "reset"}, onclick: () => setZoom(1)}, "100 %"),
    h("span", {class: "muted"}, `${layout.nodes.length} nodes · ${layout.edges.length} edges · `
                                + `${layout.layers} layers`));
  const element = h("div", {class: "graph-view"}, toolbar, legend,
                    h("div", {class: "graph-body"}, scroller, details));
  // Once on the page (it has a size then), a wide graph is shrunk to the width, within reason,
  // and a graph still wider is scrolled to its inputs, where reading starts.
  requestAnimationFrame(() => {
    if (!scroller.clientWidth || layout.width <= scroller.clientWidth) return;
    setZoom(Math.max(0.5, (scroller.clientWidth - 4) / layout.width));
    const sources = layout.nodes.filter((n) => n.layer === 0);
    if (sources.length) {
      const x = sources.reduce((sum, n) => sum + n.x, 0) / sources.length;
      scroller.scrollLeft = x * zoom - scroller.clientWidth / 2;
      scroller.scrollTop = 0;
    }
  });
  return element;
}
