// #/jobs/<id>: one search job. Live progress and a cancel button; the candidates as a scatter
// plot (score against parameters or FLOPs, Pareto front highlighted) and as a table paged with
// the API's cursors. Scores are labelled by what they are (scores.js): the ranking head's
// estimate of trained accuracy, with the predicted accuracy beside it, or the predicted accuracy.

import {apiPath, get, getAll, post} from "../api.js";
import {
  facts, formatCount, formatExact, formatScore, formatSeconds, h, progressBar, route, shortId,
  statusBadge, timeCell, updateProgress,
} from "../dom.js";
import {problemBox} from "../problem.js";
import {renderScatter} from "../scatter.js";
import {
  ESTIMATE, FIDELITY_TITLE, PREDICTED_COLUMN, SHORT_TRAINING, describeFidelity, describeRanking,
  describeSchedule, describeScore, scoreKindOf, scoreLabels, showsPredictedBeside,
} from "../scores.js";
import {ACTIVE} from "./jobs.js";

const POLL_MS = 1500;
const PAGE_SIZES = [25, 50, 100];
// The API orders candidates by score (best first) or index; the predicted accuracy, parameters
// and FLOPs have no API order, so those sort the rows of the page shown.
const SERVER_ORDERS = new Set(["score", "index"]);
const LOCAL_SORT_NAMES = {predicted_accuracy: "predicted accuracy", num_parameters: "parameters",
                          flops: "FLOPs"};
const NUMERIC = new Set(["index", "score", "predicted_accuracy", "num_parameters", "flops",
                         "seconds"]);

/** The table's columns for scores of `kind`: the score titled by what it is, and beside an
 * estimate (or scores of several kinds) the predicted accuracy; without a ranking head the
 * score is the predicted accuracy, shown once. */
function columns(kind, target) {
  const score = scoreLabels(kind, target);
  return [
    {key: "index", title: "#", sortable: true},
    {key: "status", title: "Status"},
    {key: "score", title: score.column, tooltip: score.title, sortable: true},
    showsPredictedBeside(kind)
      ? {key: "predicted_accuracy", title: PREDICTED_COLUMN.column, tooltip: PREDICTED_COLUMN.title,
         sortable: true, firstDir: -1} : null,
    {key: "fidelity", title: "Fidelity", tooltip: FIDELITY_TITLE},
    {key: "num_parameters", title: "Parameters", sortable: true},
    {key: "flops", title: "FLOPs", sortable: true},
    {key: "seconds", title: "Time"},
    {key: "reason", title: "Reason"},
  ].filter(Boolean);
}

export async function render(root, [jobId], ctx) {
  const jobPath = `/v1/search-jobs/${encodeURIComponent(jobId)}`;
  const slot = h("div", {class: "slot"});
  root.append(slot);
  let job;
  try {
    job = await get(jobPath, {signal: ctx.signal});
  } catch (error) {
    if (error.name !== "AbortError") {
      slot.append(h("h1", null, `Search job ${shortId(jobId)}`), problemBox(error),
                  h("p", null, h("a", {href: route("jobs")}, "All search jobs")));
    }
    return;
  }

  // ---- summary -----------------------------------------------------------------------------
  const title = h("h1", null, "Search job ", h("span", {class: "mono"}, shortId(job.id)));
  const badge = h("span", {id: "job-status"});
  const cancel = h("button", {type: "button", id: "cancel-job", class: "danger"}, "Cancel job");
  const progress = progressBar(0);
  progress.id = "job-progress";
  const progressText = h("p", {class: "muted", id: "progress-text"});
  const summary = h("div");
  const actionSlot = h("div", {class: "slot"});
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, h("div", {class: "title-row"}, title, badge), cancel),
    actionSlot, progress, progressText, summary));

  // ---- scatter -----------------------------------------------------------------------------
  let metric = "num_parameters";
  let candidates = [];
  const plot = h("div", {class: "plot", id: "scatter"});
  const plotNote = h("p", {class: "muted", id: "scatter-note"});
  const metricButtons = [["num_parameters", "Parameters"], ["flops", "FLOPs"]].map(([key, label]) =>
    h("button", {type: "button", class: "toggle", dataset: {metric: key},
                 "aria-pressed": String(key === metric)}, label));
  const plotSlot = h("div", {class: "slot"});
  const plotTitle = h("h2", {id: "scatter-title"});
  const plotLegend = h("p", {class: "plot-legend", id: "scatter-legend"});
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, plotTitle,
      h("div", {class: "toolbar", role: "group", "aria-label": "x axis"}, metricButtons)),
    plotSlot, plot, plotLegend, plotNote));

  // What the scores are: from the candidates' score_kind, and the training an estimate is of
  // from the best candidate's architecture (score.ranking.target), read once per architecture.
  let kind = null;
  let target = null;
  let targetOf = null;
  /** Whether the target changed. */
  const lookUpTarget = async () => {
    const best = job.best_candidate;
    if (kind !== ESTIMATE || !best || !best.architecture_url || targetOf === best.architecture_id) {
      return false;
    }
    targetOf = best.architecture_id;
    const before = target;
    try {
      const arch = await get(apiPath(best.architecture_url), {signal: ctx.signal});
      target = (arch.score && arch.score.ranking && arch.score.ranking.target) || null;
    } catch (error) {
      if (error.name === "AbortError") throw error;
      target = null;  // the labels do without it
    }
    return target !== before;
  };

  const drawPlot = () => {
    const labels = scoreLabels(kind, target);
    const name = labels.name;
    const size = metric === "flops" ? "FLOPs" : "parameters";
    plotTitle.textContent = `${labels.heading} against size`;
    plotLegend.replaceChildren(
      h("span", {class: "dot"}), " candidate  ", h("span", {class: "dot pareto"}),
      ` Pareto front: the best ${name} for its size (no candidate with at most as many ${size} `
        + "scores higher). ",
      kind === ESTIMATE || kind === SHORT_TRAINING
        ? h("span", {class: "muted", id: "scatter-estimate"}, labels.title, " ") : null,
      "Click a point to open the candidate.");
    const {element, points, front} = renderScatter(candidates, metric, labels);
    plot.replaceChildren(element);
    plotNote.textContent = `${points} scored candidate(s) plotted, ${front} on the Pareto front`
      + (candidates.length > points ? `; ${candidates.length - points} not scored` : "") + ".";
  };
  for (const button of metricButtons) {
    button.addEventListener("click", () => {
      metric = button.dataset.metric;
      for (const b of metricButtons) b.setAttribute("aria-pressed", String(b === button));
      drawPlot();
    });
  }

  // ---- table -------------------------------------------------------------------------------
  const table = {order: "score", localSort: null, localDir: 1, cursors: [null], size: 25,
                 items: [], next: null};
  const thead = h("thead");
  const tbody = h("tbody");
  const prev = h("button", {type: "button", id: "page-prev"}, "← Previous");
  const next = h("button", {type: "button", id: "page-next"}, "Next →");
  const pageLabel = h("span", {class: "muted", id: "page-label"});
  const sizeSelect = h("select", {"aria-label": "Rows per page", id: "page-size"},
    PAGE_SIZES.map((n) => h("option", {value: n}, `${n} per page`)));
  const sortHint = h("p", {class: "muted", id: "sort-hint"});
  const tableSlot = h("div", {class: "slot"});
  root.append(h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h2", null, "Candidates"), sizeSelect),
    tableSlot, sortHint,
    h("div", {class: "table-wrap"}, h("table", {class: "table", id: "candidates-table"}, thead, tbody)),
    h("div", {class: "pager"}, prev, pageLabel, next)));

  const sortKey = () => table.localSort || table.order;
  // Everything titled by the kind is redrawn when it changes (the first scores arrive).
  const refreshKind = () => {
    const now = scoreKindOf([...candidates, ...table.items, job.best_candidate]);
    if (now === kind) return;
    kind = now;
    drawHead();
    drawRows();
    drawPlot();
  };
  const drawHead = () => {
    const cols = columns(kind, target);
    if (table.localSort && !cols.some((col) => col.key === table.localSort)) table.localSort = null;
    thead.replaceChildren(h("tr", null, cols.map((col) => {
      const attrs = {scope: "col", title: col.tooltip || null, dataset: {column: col.key}};
      if (!col.sortable) return h("th", attrs, col.title);
      const active = sortKey() === col.key;
      const dir = !active ? "none" : table.localSort ? (table.localDir > 0 ? "ascending" : "descending")
        : col.key === "score" ? "descending" : "ascending";
      return h("th", {...attrs, "aria-sort": dir},
        h("button", {type: "button", class: "sort", dataset: {sort: col.key}},
          col.title, h("span", {class: "sort-mark"}, dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : "")));
    })));
    sortHint.textContent = table.localSort
      ? `Sorted by ${LOCAL_SORT_NAMES[table.localSort]} within this page; `
        + `pages follow the API's ${table.order} order.`
      : table.order === "score" ? "Best first; unscored candidates last." : "In index order.";
  };
  const drawRows = () => {
    let rows = table.items;
    if (table.localSort) {
      const key = table.localSort;
      rows = [...rows].sort((a, b) => {
        const av = a[key];
        const bv = b[key];
        if (av === null || av === undefined) return (bv === null || bv === undefined) ? a.index - b.index : 1;
        if (bv === null || bv === undefined) return -1;
        return (av - bv) * table.localDir || a.index - b.index;
      });
    }
    const cols = columns(kind, target);
    tbody.replaceChildren(...rows.map((c) => candidateRow(c, cols)));
    if (!rows.length) {
      tbody.append(h("tr", null, h("td", {colspan: cols.length, class: "empty"},
                                  ACTIVE.has(job.status) ? "No candidates recorded yet." : "No candidates.")));
    }
    const page = table.cursors.length;
    prev.disabled = page <= 1;
    next.disabled = !table.next;
    pageLabel.textContent = `Page ${page}`;
  };
  const loadPage = async () => {
    const query = new URLSearchParams({order_by: table.order, limit: String(table.size)});
    const cursor = table.cursors[table.cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    try {
      const page = await get(`${jobPath}/candidates?${query}`, {signal: ctx.signal});
      table.items = page.items;
      table.next = page.next_cursor;
      tableSlot.replaceChildren();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      tableSlot.replaceChildren(problemBox(error));
    }
    refreshKind();
    drawRows();
  };
  thead.addEventListener("click", (event) => {
    const button = event.target.closest("button.sort");
    if (!button) return;
    const key = button.dataset.sort;
    if (SERVER_ORDERS.has(key)) {
      table.localSort = null;
      if (key !== table.order) {
        table.order = key;
        table.cursors = [null];
        drawHead();
        loadPage();
        return;
      }
    } else {
      const col = columns(kind, target).find((c) => c.key === key);
      table.localDir = table.localSort === key ? -table.localDir : (col && col.firstDir) || 1;
      table.localSort = key;
    }
    drawHead();
    drawRows();
  });
  next.addEventListener("click", () => {
    if (!table.next) return;
    table.cursors.push(table.next);
    loadPage();
  });
  prev.addEventListener("click", () => {
    if (table.cursors.length <= 1) return;
    table.cursors.pop();
    loadPage();
  });
  sizeSelect.addEventListener("change", () => {
    table.size = Number(sizeSelect.value);
    table.cursors = [null];
    loadPage();
  });

  // ---- live updates ------------------------------------------------------------------------
  const drawJob = () => {
    badge.replaceChildren(h("span", null, statusBadge(job.status),
      job.cancel_requested && ACTIVE.has(job.status) ? h("span", {class: "muted"}, " cancel requested") : null));
    root.dataset.jobStatus = job.status;
    const p = job.progress;
    updateProgress(progress, p.fraction, `${p.done} / ${p.total} candidates`);
    progressText.textContent = [
      `${(p.fraction * 100).toFixed(1)} % done`,
      job.rate ? `${job.rate.toFixed(2)} candidates/s` : null,
      job.timings && job.timings.running_seconds != null
        ? `running ${formatSeconds(job.timings.running_seconds)}` : null,
      job.status === "queued" && job.timings ? `queued ${formatSeconds(job.timings.queued_seconds)}` : null,
    ].filter(Boolean).join(" · ");
    cancel.disabled = !ACTIVE.has(job.status) || job.cancel_requested;
    cancel.hidden = !ACTIVE.has(job.status);
    const best = job.best_candidate;
    const c = job.constraints || {};
    summary.replaceChildren(facts([
      ["Best candidate", best ? h("span", {id: "best-candidate"},
                                  h("a", {href: route("candidates", best.id), id: "best-link"}, `#${best.index}`),
                                  ` · ${describeScore(best)} · `
                                  + `${formatCount(best.num_parameters)} parameters`) : "–"],
      ["Space", job.space], ["Task", job.task], ["Strategy", job.strategy],
      ["Seed", String(job.seed)],
      ["Budget", `${formatExact(job.budget.candidates)} candidates`
                 + (job.budget.seconds ? `, ${formatSeconds(job.budget.seconds)}` : "")],
      ["Constraints", [c.max_parameters ? `≤ ${formatCount(c.max_parameters)} parameters` : null,
                       c.max_flops ? `≤ ${formatCount(c.max_flops)} FLOPs` : null]
                        .filter(Boolean).join(", ") || "none"],
      ["Fidelity", h("span", {id: "job-fidelity", title: FIDELITY_TITLE},
                     describeSchedule(job.fidelity))],
      ["Ranked by", h("span", {id: "job-ranking"}, describeRanking(job.ranking))],
      ["Created", timeCell(job.created_at)], ["Started", timeCell(job.started_at)],
      ["Finished", timeCell(job.finished_at)],
      ["Attempts", String(job.attempts)],
      job.error ? ["Error", h("span", {class: "error-text"}, job.error)] : null,
      ["Job id", h("span", {class: "mono"}, job.id)],
    ], "two-col"));
  };
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const answer = await post(apiPath(job.links.cancel), undefined, {signal: ctx.signal});
      job = answer.body;
      actionSlot.replaceChildren();
      drawJob();
    } catch (error) {
      if (error.name !== "AbortError") actionSlot.replaceChildren(problemBox(error));
      cancel.disabled = false;
    }
  });

  const loadCandidates = async () => {
    try {
      candidates = await getAll(`${jobPath}/candidates?order_by=index`, {signal: ctx.signal});
      plotSlot.replaceChildren();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      plotSlot.replaceChildren(problemBox(error));
    }
    refreshKind();
    drawPlot();
  };

  drawJob();
  drawHead();
  drawPlot();
  let lastDone = -1;
  let wasActive = true;
  await ctx.poll(async () => {
    const first = lastDone < 0;
    if (!first) {
      try {
        job = await get(jobPath, {signal: ctx.signal});
        actionSlot.replaceChildren();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        actionSlot.replaceChildren(problemBox(error));
        return true;
      }
      drawJob();
    }
    // Candidates are fetched again only when the count moved, and once more at the end.
    const active = ACTIVE.has(job.status);
    if (job.progress.done !== lastDone || (wasActive && !active)) {
      lastDone = job.progress.done;
      await Promise.all([loadCandidates(), loadPage()]);
      if (await lookUpTarget()) {
        drawHead();
        drawPlot();
      }
    }
    wasActive = active;
    return active;
  }, POLL_MS);
}

function candidateRow(c, cols) {
  const cells = {
    index: h("a", {href: route("candidates", c.id)}, `#${c.index}`),
    status: statusBadge(c.status),
    score: formatScore(c.score),
    predicted_accuracy: formatScore(c.predicted_accuracy),
    fidelity: h("span", {class: c.full_fidelity === false ? "muted" : null},
                describeFidelity(c)),
    num_parameters: h("span", {title: formatExact(c.num_parameters)}, formatCount(c.num_parameters)),
    flops: h("span", {title: formatExact(c.flops)}, formatCount(c.flops)),
    seconds: formatSeconds(c.seconds),
    reason: c.reason ? h("span", {class: "reason", title: c.reason}, c.reason) : "",
  };
  return h("tr", {dataset: {candidateId: c.id, index: c.index, score: c.score ?? "",
                            predicted: c.predicted_accuracy ?? "",
                            params: c.num_parameters ?? "", flops: c.flops ?? ""}},
    cols.map((col) => h("td", {class: NUMERIC.has(col.key) ? "num" : null}, cells[col.key])));
}
