// What a candidate's score is, in words. A search ranks candidates by the GHN's ranking head's
// estimate of the accuracy the network would reach if trained when the GHN has a ranking head
// (score_kind "estimated-trained-accuracy"), else by the accuracy of the network with its
// predicted weights ("predicted-accuracy"); a job ranked by short training ranks by the accuracy
// after a few SGD steps from the default initialisation ("short-training-accuracy").
// predicted_accuracy is always the accuracy with the predicted weights, so neither an estimate
// nor a short training is shown as the accuracy of the network the checkpoint holds.

import {formatScore} from "./dom.js";

export const ESTIMATE = "estimated-trained-accuracy";
export const PREDICTED = "predicted-accuracy";
export const BPC = "negative-predicted-bpc";
export const SHORT_TRAINING = "short-training-accuracy";
export const MIXED = "mixed";

/** Whether scores of `kind` are not the predicted accuracy, which then goes beside them. */
export function showsPredictedBeside(kind) {
  return kind === ESTIMATE || kind === SHORT_TRAINING || kind === MIXED;
}

/** The kind of the scores of `candidates` (nulls skipped): ESTIMATE or PREDICTED when they all
 * say the same, MIXED when they differ, null when none says (nothing scored yet). */
export function scoreKindOf(candidates) {
  const kinds = new Set(candidates.filter((c) => c && c.score_kind).map((c) => c.score_kind));
  if (kinds.size === 0) return null;
  return kinds.size === 1 ? [...kinds][0] : MIXED;
}

const PREDICTED_TITLE = "Accuracy of the network with its GHN-predicted weights on the "
  + "validation images: what its downloaded checkpoint reproduces.";

/** Labels of a score of `kind`: `column` (a table header), `title` (its tooltip), `name` (an
 * axis, a sentence), `heading` (a title, a fact's label). `target` (score.ranking.target of an architecture) names the training the
 * estimate is of, when known. */
export function scoreLabels(kind, target) {
  if (kind === ESTIMATE) {
    return {
      column: "Est. trained acc.", name: "estimated trained accuracy",
      heading: "Estimated trained accuracy",
      title: `The GHN's ranking head's estimate of ${target || "the accuracy after training"} `
        + "(what the network would reach if trained), from its predicted accuracy and size; "
        + "the search ranks candidates by it. Not the accuracy of the predicted weights: "
        + "that is Predicted acc.",
    };
  }
  if (kind === PREDICTED) {
    return {column: "Predicted acc.", name: "predicted accuracy", heading: "Predicted accuracy",
            title: `${PREDICTED_TITLE} The GHN has no ranking head: the search ranks by it.`};
  }
  if (kind === SHORT_TRAINING) {
    return {
      column: "Short-training acc.", name: "accuracy after short training",
      heading: "Accuracy after short training",
      title: "Validation accuracy of the network after a few SGD steps from its default "
        + "initialisation (the job's ranking): the search ranks candidates by it. Not the "
        + "accuracy of the predicted weights: that is Predicted acc.",
    };
  }
  if (kind === BPC) {
    return {column: "Predicted bpc", name: "predicted bits per character (up: fewer)",
            heading: "Predicted bits per character",
            title: "Validation bits per character of the language model with its GHN-predicted "
              + "weights, lower is better: the search ranks candidates by it, the lowest first."};
  }
  return {
    column: "Score", name: "score", heading: "Score",
    title: "What the search ranks by: the ranking head's estimate of trained accuracy where the "
      + "GHN had one, else the accuracy with the predicted weights; the accuracy after a short "
      + "training where the job ranks by it.",
  };
}

/** The second column, beside an estimate: the network's own accuracy. */
export const PREDICTED_COLUMN = {column: "Predicted acc.", title: PREDICTED_TITLE};

/** "est. trained accuracy 91.20 % · predicted 76.00 %", "predicted accuracy 76.00 %", or the
 * bare percentage when the service does not say what the score is. */
export function describeScore(candidate) {
  if (candidate.score_kind === ESTIMATE) {
    return `est. trained accuracy ${formatScore(candidate.score)} · predicted `
      + formatScore(candidate.predicted_accuracy);
  }
  if (candidate.score_kind === SHORT_TRAINING) {
    return `after short training ${formatScore(candidate.score)} · predicted `
      + formatScore(candidate.predicted_accuracy);
  }
  if (candidate.score_kind === PREDICTED) return `predicted accuracy ${formatScore(candidate.score)}`;
  if (candidate.score_kind === BPC) return `predicted ${formatScore(candidate.score)}`;
  return formatScore(candidate.score);
}

/** How well the ranking head ranks: "Kendall τ 0.62 on <measured_on>" when the head says which
 * architectures its tau was measured on, else "leave-one-out Kendall τ 0.62" (the architectures
 * it was fit on). */
export function rankingQuality(ranking) {
  const tau = ranking.kendall_tau == null ? "?" : ranking.kendall_tau.toFixed(2);
  return ranking.measured_on ? `Kendall τ ${tau} on ${ranking.measured_on}`
    : `leave-one-out Kendall τ ${tau}`;
}

/** What a job ranks by, in words: "the GHN's score", or "short training, 8 SGD steps (Kendall
 * τ 0.73 on <measured_on>)". */
export function describeRanking(ranking) {
  if (!ranking || ranking.method !== "short-training") return "the GHN's score";
  const tau = ranking.kendall_tau == null ? ""
    : ` (Kendall τ ${ranking.kendall_tau.toFixed(2)} on ${ranking.measured_on})`;
  return `short training, ${ranking.steps} SGD steps from the default initialisation${tau}`;
}

/** The fidelity a candidate's score was taken at, in words: "1,000 images · full" for a
 * full-budget score (the job's last rung: only those compete for best), "250 images · rung 0"
 * for a cheaper one; "" when it has no score. */
export function describeFidelity(candidate) {
  if (candidate.rung == null) return "";
  const images = candidate.eval_images == null ? "?" : candidate.eval_images.toLocaleString("en");
  return `${images} images · ` + (candidate.full_fidelity ? "full" : `rung ${candidate.rung}`);
}

/** A job's schedule in words: "250 → 1,000 images, best 1/4 promoted in brackets of 16", or
 * "every candidate on the full budget" without one. */
export function describeSchedule(fidelity) {
  if (!fidelity) return "every candidate on the full budget";
  const rungs = fidelity.rungs.map((r) => r.toLocaleString("en")).join(" → ");
  return `${rungs} images, best 1/${fidelity.eta} promoted in brackets of ${fidelity.bracket}`;
}

export const FIDELITY_TITLE = "Validation images the score was taken on. A job with rungs "
  + "scores every candidate on the first and only the best of each bracket on the next, up to "
  + "the full budget; only full scores compete for the job's best candidate.";
