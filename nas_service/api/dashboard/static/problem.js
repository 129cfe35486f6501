// Showing RFC 9457 problems: a box with the title, status, detail and each located error, and
// the form fields the errors point at marked where they are.

import {h} from "./dom.js";

/** The box for an ApiError (or any Error). */
export function problemBox(error) {
  const problem = error && error.problem ? error.problem
    : {title: "Error", detail: String(error && error.message ? error.message : error)};
  const errors = Array.isArray(problem.errors) ? problem.errors : [];
  const status = problem.status ? ` (${problem.status})` : "";
  return h("div", {class: "problem", role: "alert"},
    h("p", {class: "problem-title"}, `${problem.title || "Error"}${status}`),
    problem.detail ? h("p", {class: "problem-detail"}, String(problem.detail)) : null,
    errors.length ? h("ul", {class: "problem-errors"}, errors.slice(0, 100).map(errorItem)) : null,
    problem.type && problem.type !== "about:blank"
      ? h("p", {class: "problem-type"}, String(problem.type)) : null);
}

function errorItem(e) {
  const where = [e.location, e.node ? `node ${e.node}` : null, e.field ? `field ${e.field}` : null]
    .filter(Boolean).join(" · ");
  return h("li", null, where ? h("code", null, where) : null, where ? " " : null,
           String(e.message ?? ""));
}

/** Shows `error` in `slot` (replacing what was there) and marks the fields of `form` that the
 * problem's errors locate: a field declares the location it fills with data-location
 * ("/body/budget/candidates"); an error at or below that location lands next to it. */
export function showProblem(slot, error, form) {
  slot.replaceChildren(problemBox(error));
  if (form) markFields(form, error && error.problem ? error.problem.errors : null);
}

export function clearProblem(slot, form) {
  slot.replaceChildren();
  if (form) markFields(form, null);
}

function markFields(form, errors) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const field of form.querySelectorAll(".invalid")) {
    field.classList.remove("invalid");
    field.removeAttribute("aria-invalid");
  }
  if (!Array.isArray(errors)) return;
  const fields = [...form.querySelectorAll("[data-location]")];
  for (const e of errors) {
    const location = String(e.location || "");
    // The most specific field whose location is this error's or one of its parents.
    let best = null;
    for (const field of fields) {
      const own = field.dataset.location;
      if ((location === own || location.startsWith(own + "/"))
          && (!best || own.length > best.dataset.location.length)) {
        best = field;
      }
    }
    if (!best) continue;
    best.classList.add("invalid");
    best.setAttribute("aria-invalid", "true");
    const label = best.closest("label") || best;
    label.append(h("span", {class: "field-error"}, String(e.message ?? "invalid")));
  }
}
