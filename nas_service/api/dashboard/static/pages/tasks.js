// #/tasks: the tasks the service knows, built in and registered by upload, with each registered
// task's adaptation (the background job that teaches the GHN the task) and its live progress.

import {get} from "../api.js";
import {formatScore, h, progressBar, statusBadge, timeCell} from "../dom.js";
import {problemBox} from "../problem.js";

const POLL_MS = 2000;
const ACTIVE = new Set(["queued", "running"]);

export async function render(root, params, ctx) {
  const tbody = h("tbody");
  const table = h("table", {class: "table", id: "tasks-table"},
    h("thead", null, h("tr", null,
      ["Task", "Input", "Classes", "Scored", "Adaptation", "Progress", "Result", "Registered"]
        .map((title) => h("th", {scope: "col"}, title)))),
    tbody);
  const slot = h("div", {class: "slot"});
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h1", null, "Tasks")),
    h("p", {class: "muted"}, "Register a task by uploading its dataset: ",
      h("code", null, "nas-service tasks add NAME FILE..."), " or POST /v1/tasks. The service then "
      + "adapts its hypernetwork to it; the task is scored once that is done."),
    slot, h("div", {class: "table-wrap"}, table)));

  await ctx.poll(async () => {
    try {
      const tasks = await get("/v1/tasks", {signal: ctx.signal});
      slot.replaceChildren();
      tbody.replaceChildren(...tasks.map(row));
      return tasks.some((t) => t.adaptation && ACTIVE.has(t.adaptation.status));
    } catch (error) {
      if (error.name === "AbortError") throw error;
      slot.replaceChildren(problemBox(error));
      return true;
    }
  }, POLL_MS);
}

function row(task) {
  const a = task.adaptation;
  const progress = a ? a.progress : null;
  const result = a && a.result
    ? `loss ${formatScore(a.result.loss)}, acc. ${formatScore(a.result.accuracy)}`
    : (a && a.error ? a.error : "–");
  return h("tr", {dataset: {task: task.name}},
    h("td", {class: "mono"}, task.name),
    h("td", null, task.input_shape.join("×")),
    h("td", {class: "num"}, String(task.num_classes)),
    h("td", null, task.scored ? "yes" : "no"),
    h("td", null, a ? statusBadge(a.status) : h("span", {class: "muted"}, "built in")),
    h("td", {class: "progress-cell"}, progress
      ? progressBar(progress.fraction, `${progress.done} / ${progress.total} steps`) : "–"),
    h("td", {class: a && a.error ? "error-text" : null}, result),
    h("td", null, task.created_at ? timeCell(task.created_at) : "–"));
}
