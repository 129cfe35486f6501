// #/jobs: the search jobs, newest first, with live progress while any is queued or running, and
// each job's best score, titled by what it is (scores.js).

import {apiPath, get} from "../api.js";
import {
  formatScore, h, progressBar, route, shortId, statusBadge, timeCell,
} from "../dom.js";
import {problemBox} from "../problem.js";
import {PREDICTED_COLUMN, scoreKindOf, scoreLabels, showsPredictedBeside} from "../scores.js";

const PAGE_SIZE = 25;
const POLL_MS = 2000;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const ACTIVE = new Set(["queued", "running"]);

export async function render(root, params, ctx) {
  const filter = h("select", {id: "status-filter", "aria-label": "Status"},
    h("option", {value: ""}, "All statuses"),
    STATUSES.map((s) => h("option", {value: s}, s)));
  const tbody = h("tbody");
  const bestHead = h("th", {scope: "col", id: "jobs-best"});
  const table = h("table", {class: "table", id: "jobs-table"},
    h("thead", null, h("tr", null,
      ["Job", "Status", "Progress", "Space", "Strategy"].map((title) => h("th", {scope: "col"}, title)),
      bestHead, h("th", {scope: "col"}, "Created"))),
    tbody);
  const more = h("button", {type: "button", id: "jobs-more", hidden: true}, "Load older jobs");
  const slot = h("div", {class: "slot"});
  const empty = h("p", {class: "empty", hidden: true}, "No search jobs yet. ",
                  h("a", {href: route("new", "search")}, "Start one."));
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h1", null, "Search jobs"),
      h("div", {class: "toolbar"}, filter,
        h("a", {class: "button primary", href: route("new", "search")}, "New search"))),
    slot, h("div", {class: "table-wrap"}, table), empty, more));

  // The first page is refreshed by the poll; older pages, loaded by "Load older jobs", keep
  // their own cursor and only their active jobs are refreshed, one by one.
  let firstPage = [];
  let firstCursor = null;
  let older = [];
  let olderCursor = null;
  let olderLoaded = false;

  const listUrl = (cursor) => {
    const query = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (filter.value) query.set("status", filter.value);
    if (cursor) query.set("cursor", cursor);
    return `/v1/search-jobs?${query}`;
  };

  const draw = () => {
    const jobs = [...firstPage, ...older];
    const kind = scoreKindOf(jobs.map((j) => j.best_candidate));
    const labels = scoreLabels(kind);
    bestHead.textContent = `Best ${labels.column.toLowerCase()}`;
    bestHead.title = labels.title + (showsPredictedBeside(kind)
      ? ` The predicted accuracy follows it (pred.): ${PREDICTED_COLUMN.title}` : "");
    tbody.replaceChildren(...jobs.map(row));
    empty.hidden = jobs.length > 0;
    more.hidden = !(olderLoaded ? olderCursor : firstCursor);
  };

  const refresh = async () => {
    try {
      const page = await get(listUrl(null), {signal: ctx.signal});
      const ids = new Set(page.items.map((j) => j.id));
      older = await Promise.all(older.filter((j) => !ids.has(j.id)).map((j) => (
        ACTIVE.has(j.status) ? get(apiPath(j.links.self), {signal: ctx.signal}) : j)));
      firstPage = page.items;
      firstCursor = page.next_cursor;
      slot.replaceChildren();
      draw();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      slot.replaceChildren(problemBox(error));
    }
  };

  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const page = await get(listUrl(olderLoaded ? olderCursor : firstCursor),
                             {signal: ctx.signal});
      const known = new Set([...firstPage, ...older].map((j) => j.id));
      older = [...older, ...page.items.filter((j) => !known.has(j.id))];
      olderCursor = page.next_cursor;
      olderLoaded = true;
      draw();
    } catch (error) {
      if (error.name !== "AbortError") slot.replaceChildren(problemBox(error));
    } finally {
      more.disabled = false;
    }
  });
  filter.addEventListener("change", () => {
    older = [];
    olderCursor = null;
    olderLoaded = false;
    refresh();
  });

  await ctx.poll(async () => {
    await refresh();
    return true;  // new jobs may appear at any time: the list keeps refreshing while shown
  }, POLL_MS);
}

function row(job) {
  const progress = job.progress || {done: 0, total: 0, fraction: 0};
  const best = job.best_candidate;
  return h("tr", {dataset: {jobId: job.id, status: job.status}},
    h("td", null, h("a", {href: route("jobs", job.id), class: "mono"}, shortId(job.id))),
    h("td", null, statusBadge(job.status),
      job.cancel_requested && ACTIVE.has(job.status) ? h("span", {class: "muted"}, " cancelling") : null),
    h("td", {class: "progress-cell"},
      progressBar(progress.fraction, `${progress.done} / ${progress.total}`)),
    h("td", null, job.space),
    h("td", null, job.strategy),
    h("td", {class: "num best-score"}, best
      ? [h("a", {href: route("candidates", best.id)}, formatScore(best.score)),
         showsPredictedBeside(best.score_kind)
           ? h("span", {class: "muted"}, ` · pred. ${formatScore(best.predicted_accuracy)}`) : null]
      : "–"),
    h("td", null, timeCell(job.created_at)));
}
