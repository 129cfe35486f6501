// #/architectures/<id> and #/candidates/<id>: an architecture's scores, counts and graph
// picture, and the download of its predicted weights.

import {apiPath, fetchFile, get, getApiKey} from "../api.js";
import {
  facts, formatCount, formatExact, formatScore, formatScoreValue, formatSeconds, h, route, saveBlob,
  shortId,
  statusBadge, timeCell,
} from "../dom.js";
import {renderGraph} from "../graph.js";
import {problemBox} from "../problem.js";
import {
  FIDELITY_TITLE, PREDICTED_COLUMN, describeFidelity, rankingQuality, scoreLabels,
  showsPredictedBeside,
} from "../scores.js";

/** A link to a checkpoint route. Without an API key the browser follows it (and streams the
 * file); with one, the file is fetched with the key header and then saved. */
export function downloadButton(url) {
  const path = apiPath(url);
  const slot = h("span", {class: "download-status muted", role: "status"});
  const link = h("a", {class: "button primary", href: path, download: "", id: "download-checkpoint"},
                 "Download checkpoint (safetensors)");
  link.addEventListener("click", async (event) => {
    if (!getApiKey()) return;
    event.preventDefault();
    slot.textContent = "Downloading…";
    try {
      const {blob, filename} = await fetchFile(path);
      saveBlob(blob, filename);
      slot.textContent = `${formatExact(blob.size)} bytes`;
    } catch (error) {
      slot.replaceChildren(problemBox(error));
    }
  });
  return h("div", {class: "download"}, link, " ", slot);
}

function timings(values) {
  const entries = Object.entries(values || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${formatSeconds(v)}`).join(" · ") : "–";
}

/** The architecture card and its graph, for an ArchitectureResponse. `downloadUrl` overrides the
 * architecture's own checkpoint URL (a candidate's file has the candidate's name). */
export function architectureView(arch, {downloadUrl, heading} = {}) {
  const graph = arch.graph || {};
  const nodes = Array.isArray(graph.nodes) ? graph.nodes : [];
  const edges = nodes.reduce((sum, n) => sum + new Set(Array.isArray(n.inputs) ? n.inputs : []).size, 0);
  const opCount = new Set(nodes.map((n) => n.op)).size;
  const score = arch.score;
  const bpc = Boolean(score && score.name === "predicted-bpc");
  const name = arch.name || `Architecture ${shortId(arch.id)}`;
  const checkpoint = downloadUrl || (arch.checkpoint && arch.checkpoint.url);
  const card = h("section", {class: "card architecture", dataset: {architectureId: arch.id}},
    h("div", {class: "card-head"},
      h("div", null, heading ? h("p", {class: "eyebrow"}, heading) : null,
        h(heading ? "h2" : "h1", {class: "arch-name"}, name)),
      h("div", {class: "score-big", id: "arch-score", title: PREDICTED_COLUMN.title},
        h("span", {class: "score-value"}, formatScoreValue(score)),
        h("span", {class: "muted"}, bpc ? "predicted bits per character" : "predicted accuracy"))),
    h("div", {class: "stats"},
      stat("Parameters", formatCount(arch.num_parameters), formatExact(arch.num_parameters), "arch-params"),
      stat("FLOPs", formatCount(arch.flops), `${formatExact(arch.flops)} multiply-accumulates per sample`, "arch-flops"),
      stat("Nodes", String(nodes.length), null, "arch-nodes"),
      stat("Edges", String(edges), null, "arch-edges"),
      stat("Op kinds", String(opCount), null, "arch-ops")),
    facts([
      bpc ? ["Predicted bits per character", `${formatScoreValue(score)} (${score.name}, lower is `
                        + `better) on ${score.images ?? "?"} ${score.split} windows`]
        : ["Predicted accuracy", score ? `${formatScore(score.value)} (${score.name}) on ${score.images ?? "?"} `
                        + `${score.split} images; batch norm recalibrated on `
                        + `${score.recalibration_images ?? "?"} training images` : "not scored"],
      score && score.ranking ? ["Estimated trained accuracy", h("span", {id: "arch-ranking"},
        `${formatScore(score.ranking.value)}: ${score.ranking.target}, estimated by the GHN's `
        + `ranking head from the predicted accuracy, the size`
        + (score.ranking.grad_norm != null ? " and the gradient norm at initialisation" : "")
        + ` (${rankingQuality(score.ranking)}); searches rank candidates by it`)] : null,
      score && score.ranking && score.ranking.grad_norm != null
        ? ["Gradient norm at initialisation", h("span", {id: "arch-grad-norm",
            title: "Summed over convolution and linear weights, default initialisation (seed 0), "
                   + "one batch of 128 training images: a network whose gradients vanish there "
                   + "does not train, whatever its predicted accuracy"},
            score.ranking.grad_norm.toPrecision(3))] : null,
      ["Task", arch.task],
      ["Timings", timings(arch.timings)],
      ["Created", timeCell(arch.created_at)],
      ["GHN version", h("span", {class: "mono"}, arch.ghn_version || "–")],
      ["Architecture", h("a", {href: route("architectures", arch.id), class: "mono"}, arch.id)],
      ["Content hash", h("span", {class: "mono wrap"}, arch.content_hash)],
    ], "two-col"),
    checkpoint ? downloadButton(checkpoint) : h("p", {class: "muted"}, "No checkpoint stored."));
  const picture = h("section", {class: "card"}, h("h2", null, "Graph"), renderGraph(graph));
  return h("div", {class: "architecture-view"}, card, picture);
}

function stat(label, value, title, id) {
  return h("div", {class: "stat", title, id}, h("span", {class: "stat-value"}, value),
           h("span", {class: "stat-label"}, label));
}

export async function renderArchitecture(root, [id], ctx) {
  try {
    const arch = await get(`/v1/architectures/${encodeURIComponent(id)}`, {signal: ctx.signal});
    root.append(architectureView(arch));
  } catch (error) {
    if (error.name === "AbortError") return;
    root.append(h("section", {class: "card"}, h("h1", null, `Architecture ${shortId(id)}`),
                  problemBox(error)));
  }
}

export async function renderCandidate(root, [id], ctx) {
  let candidate;
  try {
    candidate = await get(`/v1/candidates/${encodeURIComponent(id)}`, {signal: ctx.signal});
  } catch (error) {
    if (error.name === "AbortError") return;
    root.append(h("section", {class: "card"}, h("h1", null, `Candidate ${shortId(id)}`),
                  problemBox(error)));
    return;
  }
  // The architecture first: its ranking target names what the candidate's estimate is of.
  let arch = null;
  let archProblem = null;
  if (candidate.architecture_url) {
    try {
      arch = await get(apiPath(candidate.architecture_url), {signal: ctx.signal});
    } catch (error) {
      if (error.name === "AbortError") return;
      archProblem = problemBox(error);
    }
  }
  const ranking = arch && arch.score && arch.score.ranking;
  const labels = scoreLabels(candidate.score_kind, ranking && ranking.target);
  root.append(h("section", {class: "card candidate", dataset: {candidateId: candidate.id}},
    h("div", {class: "card-head"},
      h("div", {class: "title-row"}, h("h1", null, `Candidate #${candidate.index}`),
        statusBadge(candidate.status)),
      h("a", {class: "button", href: route("jobs", candidate.job_id)}, "← Job ",
        h("span", {class: "mono"}, shortId(candidate.job_id)))),
    facts([
      [h("span", {title: labels.title, id: "candidate-score-label"}, labels.heading),
       h("span", {id: "candidate-score"}, formatScore(candidate.score))],
      showsPredictedBeside(candidate.score_kind)
        ? [h("span", {title: PREDICTED_COLUMN.title}, "Predicted accuracy"),
           h("span", {id: "candidate-predicted"}, formatScore(candidate.predicted_accuracy))] : null,
      candidate.rung != null
        ? [h("span", {title: FIDELITY_TITLE}, "Fidelity"),
           h("span", {id: "candidate-fidelity"}, describeFidelity(candidate)
             + ((candidate.rung_scores || []).length > 1
               ? " (" + candidate.rung_scores.map((r) => `${(r.images ?? "?").toLocaleString("en")}: `
                 + (r.score == null ? "failed" : formatScore(r.score))).join(", ") + ")"
               : ""))] : null,
      ["Parameters", formatExact(candidate.num_parameters)],
      ["FLOPs", formatExact(candidate.flops)],
      ["Scoring time", formatSeconds(candidate.seconds)],
      candidate.reason ? ["Reason", candidate.reason] : null,
      ["Recorded", timeCell(candidate.created_at)],
      ["Candidate id", h("span", {class: "mono"}, candidate.id)],
    ], "inline")));
  if (!candidate.architecture_id) {
    root.append(h("p", {class: "card muted"},
                  `This candidate was ${candidate.status}: it has no architecture or weights.`));
    return;
  }
  if (archProblem) {
    root.append(archProblem);
    return;
  }
  root.append(architectureView(arch, {downloadUrl: candidate.checkpoint_url,
                                      heading: "Its architecture"}));
}
