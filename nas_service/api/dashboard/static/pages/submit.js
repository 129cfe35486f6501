// #/new/architecture and #/new/search: the two forms that create things. The API validates;
// the forms only shape the request (numbers as numbers, empty optional fields left out) and
// show its problems next to the fields they locate. The forms are `novalidate` for that reason:
// one set of rules, the API's, and the same messages a client of the API would get.

import {get, localProblem, parseJSON, post} from "../api.js";
import {h, route} from "../dom.js";
import {clearProblem, showProblem} from "../problem.js";
import {architectureView} from "./architecture.js";

const DEFAULT_TASK = "fashion-mnist";

// A small valid graph, to start from in the JSON box.
const EXAMPLE_GRAPH = {
  format: "nas-graph/1",
  name: "example-cnn",
  nodes: [
    {id: "image", op: "input", shape: [1, 28, 28]},
    {id: "conv1", op: "conv2d", inputs: ["image"], out_channels: 16, kernel_size: 3, padding: 1},
    {id: "bn1", op: "batch_norm", inputs: ["conv1"]},
    {id: "act1", op: "relu", inputs: ["bn1"]},
    {id: "pool1", op: "max_pool", inputs: ["act1"], kernel_size: 2},
    {id: "conv2", op: "conv2d", inputs: ["pool1"], out_channels: 32, kernel_size: 3, padding: 1},
    {id: "bn2", op: "batch_norm", inputs: ["conv2"]},
    {id: "act2", op: "relu", inputs: ["bn2"]},
    {id: "gap", op: "global_avg_pool", inputs: ["act2"]},
    {id: "fc", op: "linear", inputs: ["gap"], out_features: 10},
    {id: "logits", op: "output", inputs: ["fc"], num_classes: 10},
  ],
};

/** An integer field's value for the request: left out when empty, a number (a BigInt past
 * 2^53, so 64-bit seeds keep their digits), or the text itself for the API to refuse. */
function integerValue(text) {
  const value = text.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) {
    const big = BigInt(value);
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return value;
}

function numberValue(text) {
  const value = text.trim();
  if (!value) return undefined;
  const number = Number(value);
  return Number.isFinite(number) ? number : value;
}

function field(label, control, hint) {
  return h("label", {class: "field"}, h("span", {class: "field-label"}, label), control,
           hint ? h("span", {class: "field-hint"}, hint) : null);
}

function select(attrs, options, selected) {
  return h("select", attrs, options.map((o) => h("option", {value: o, selected: o === selected}, o)));
}

/** A task select, filled from GET /v1/tasks (the tasks a loaded GHN scores first). */
function taskSelect(ctx) {
  const control = h("select", {name: "task", "data-location": "/body/task"},
                    h("option", {value: DEFAULT_TASK}, DEFAULT_TASK));
  get("/v1/tasks", {signal: ctx.signal}).then((tasks) => {
    if (!Array.isArray(tasks) || !tasks.length) return;
    const sorted = [...tasks].sort((a, b) => Number(b.scored) - Number(a.scored));
    control.replaceChildren(...sorted.map((t) => h("option", {value: t.name},
      t.scored ? t.name : `${t.name} (no GHN loaded for it)`)));
  }).catch(() => {
    // keep the default; the submit will report what is wrong (a missing key, say)
  });
  return control;
}

function submitting(form, busy, label) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = busy;
  button.textContent = busy ? label : button.dataset.label;
  form.setAttribute("aria-busy", String(busy));
}

// ---- architecture ------------------------------------------------------------------------------

export function renderArchitectureForm(root, params, ctx) {
  const {config} = ctx;
  const sourceButtons = [["space", "Space + seed"], ["json", "Paste JSON"], ["file", "Upload file"]]
    .map(([value, label], i) => h("label", {class: "choice"},
      h("input", {type: "radio", name: "source", value, checked: i === 0}), label));
  const spaceInput = select({name: "space", "data-location": "/body/space"}, config.spaces,
                            config.spaces[0]);
  const seedInput = h("input", {name: "seed", type: "text", inputmode: "numeric", value: "0",
                                "data-location": "/body/seed", autocomplete: "off"});
  const graphText = h("textarea", {name: "graph", rows: 14, spellcheck: "false",
                                   "data-location": "/body/graph",
                                   placeholder: '{"format": "nas-graph/1", "nodes": [...]}'});
  const graphFile = h("input", {name: "graph-file", type: "file", accept: ".json,application/json",
                                "data-location": "/body/graph"});
  const panels = {
    space: h("div", {class: "source-panel", dataset: {source: "space"}},
             h("div", {class: "row"}, field("Search space", spaceInput),
               field("Seed", seedInput, "0 to 2⁶³ − 1: the same seed gives the same architecture"))),
    json: h("div", {class: "source-panel", dataset: {source: "json"}, hidden: true},
            field("nas-graph/1 document", graphText),
            h("button", {type: "button", class: "link-button",
                         onclick: () => { graphText.value = JSON.stringify(EXAMPLE_GRAPH, null, 2); }},
              "Insert an example")),
    file: h("div", {class: "source-panel", dataset: {source: "file"}, hidden: true},
            field("Graph file (.json)", graphFile)),
  };
  const problemSlot = h("div", {class: "slot", id: "architecture-problem"});
  const result = h("div", {id: "architecture-result"});
  const form = h("form", {class: "form card", id: "architecture-form", novalidate: true},
    h("h1", null, "Score an architecture"),
    h("p", {class: "muted"}, "The GHN predicts all its weights in one forward pass; accuracy is measured on the "
      + "task's validation images. A graph scored before is answered from the store."),
    h("fieldset", {class: "choices"}, h("legend", null, "Architecture"), sourceButtons),
    Object.values(panels),
    h("div", {class: "row"}, field("Task", taskSelect(ctx))),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary", dataset: {label: "Score"}}, "Score")),
    problemSlot);
  root.append(form, result);

  const source = () => form.querySelector("input[name=source]:checked").value;
  form.addEventListener("change", (event) => {
    if (event.target.name !== "source") return;
    for (const [name, panel] of Object.entries(panels)) panel.hidden = name !== source();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblem(problemSlot, form);
    result.replaceChildren();
    const body = {task: form.elements.task.value};
    try {
      if (source() === "space") {
        body.space = spaceInput.value;
        const seed = integerValue(seedInput.value);
        if (seed !== undefined) body.seed = seed;
      } else {
        let text;
        let what;
        if (source() === "json") {
          text = graphText.value;
          what = "The pasted text";
        } else {
          const file = graphFile.files[0];
          if (!file) throw localProblem("No file chosen", "choose a .json file holding a nas-graph/1 document",
                                        [{location: "/body/graph", message: "no file chosen"}]);
          text = await file.text();
          what = `The file ${file.name}`;
        }
        try {
          body.graph = parseJSON(text);
        } catch (error) {
          throw localProblem("Invalid JSON", `${what} is not valid JSON: ${error.message}`,
                             [{location: "/body/graph", message: error.message}]);
        }
      }
    } catch (error) {
      showProblem(problemSlot, error, form);
      return;
    }
    submitting(form, true, "Scoring…");
    try {
      const answer = await post("/v1/architectures", body, {signal: ctx.signal});
      const heading = answer.status === 201 ? "Scored now" : "Scored before: the stored result";
      result.replaceChildren(architectureView(answer.body, {heading}));
    } catch (error) {
      if (error.name !== "AbortError") showProblem(problemSlot, error, form);
    } finally {
      submitting(form, false);
    }
  });
}

// ---- search job --------------------------------------------------------------------------------

export function renderSearchForm(root, params, ctx) {
  const {config} = ctx;
  const input = (name, location, attrs = {}) => h("input", {name, type: "text", autocomplete: "off",
                                                            "data-location": location, ...attrs});
  const problemSlot = h("div", {class: "slot", id: "search-problem"});
  const form = h("form", {class: "form card", id: "search-form", novalidate: true},
    h("h1", null, "New search job"),
    h("p", {class: "muted"}, "Workers propose and score the candidates; the job page follows them live."),
    h("div", {class: "row"},
      field("Search space", select({name: "space", "data-location": "/body/space"}, config.spaces, config.spaces[0])),
      field("Task", taskSelect(ctx)),
      field("Strategy", select({name: "strategy", "data-location": "/body/strategy"}, config.strategies, "random"),
            "random samples; evolution mutates the best of recent candidates"),
      field("Seed", input("seed", "/body/seed", {inputmode: "numeric", value: "0"}),
            "the job is a pure function of it"),
      field("Ranking", h("select", {name: "ranking", "data-location": "/body/ranking/method"},
                         h("option", {value: "ghn", selected: true}, "GHN score"),
                         h("option", {value: "short-training"}, "short training")),
            "short training: 8 SGD steps per candidate, about twice the time; it ranks "
            + "families the GHN was not trained on far better")),
    h("fieldset", null, h("legend", null, "Budget"),
      h("div", {class: "row"},
        field("Candidates", input("candidates", "/body/budget/candidates", {inputmode: "numeric", value: "50"}),
              `1 to ${config.max_search_candidates}`),
        field("Seconds", input("seconds", "/body/budget/seconds", {inputmode: "decimal", placeholder: "no limit"}),
              "optional: stop after this long"))),
    h("fieldset", null, h("legend", null, "Constraints (optional)"),
      h("div", {class: "row"},
        field("Max parameters", input("max_parameters", "/body/constraints/max_parameters",
                                      {inputmode: "numeric", placeholder: "none"})),
        field("Max FLOPs", input("max_flops", "/body/constraints/max_flops",
                                 {inputmode: "numeric", placeholder: "none"}),
              "multiply-accumulates per sample"))),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary", dataset: {label: "Start search"}}, "Start search")),
    problemSlot);
  root.append(form);

  // One idempotency key per filled-in form: a double submit creates one job, not two.
  let idempotencyKey = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  form.addEventListener("input", () => {
    idempotencyKey = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblem(problemSlot, form);
    const value = (name) => form.elements[name].value;
    const body = {space: value("space"), task: value("task"), strategy: value("strategy"),
                  budget: {}, constraints: {}};
    if (value("ranking") !== "ghn") body.ranking = {method: value("ranking")};
    const seed = integerValue(value("seed"));
    if (seed !== undefined) body.seed = seed;
    const candidates = integerValue(value("candidates"));
    if (candidates !== undefined) body.budget.candidates = candidates;
    const seconds = numberValue(value("seconds"));
    if (seconds !== undefined) body.budget.seconds = seconds;
    for (const name of ["max_parameters", "max_flops"]) {
      const limit = integerValue(value(name));
      if (limit !== undefined) body.constraints[name] = limit;
    }
    submitting(form, true, "Starting…");
    try {
      const answer = await post("/v1/search-jobs", body,
                                {signal: ctx.signal, headers: {"Idempotency-Key": idempotencyKey}});
      location.hash = route("jobs", answer.body.id);
    } catch (error) {
      if (error.name !== "AbortError") showProblem(problemSlot, error, form);
      submitting(form, false);
    }
  });
}
