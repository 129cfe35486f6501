// The dashboard's entry point: the hash router, the banner, the API key page.
//
// Each page is a module exporting render(view, params, ctx). A page gets ctx.signal, aborted
// when the user navigates away (its fetches and polls stop), and ctx.poll to refresh while a
// job runs. Routes: #/jobs, #/jobs/<id>, #/candidates/<id>, #/architectures/<id>,
// #/new/search, #/new/architecture, #/tasks, #/settings.

import {getApiKey, setApiKey} from "./api.js";
import {h, route} from "./dom.js";
import * as architecturePages from "./pages/architecture.js";
import * as jobPage from "./pages/job.js";
import * as jobsPage from "./pages/jobs.js";
import * as submitPages from "./pages/submit.js";
import * as tasksPage from "./pages/tasks.js";

const DEFAULT_CONFIG = {version: "", spaces: ["cells", "macro"], strategies: ["random", "evolution"],
                        max_search_candidates: 10000, auth_required: false};

function readConfig() {
  try {
    const text = document.getElementById("nas-config")?.textContent || "";
    return {...DEFAULT_CONFIG, ...JSON.parse(text)};
  } catch {
    return DEFAULT_CONFIG;  // the page was not served by the service (opened as a file)
  }
}

const config = readConfig();
const view = document.getElementById("view");
const banner = document.getElementById("banner");

const ROUTES = [
  {pattern: /^$/, nav: "jobs", render: jobsPage.render},
  {pattern: /^jobs$/, nav: "jobs", render: jobsPage.render},
  {pattern: /^jobs\/([^/]+)$/, nav: "jobs", render: jobPage.render},
  {pattern: /^candidates\/([^/]+)$/, nav: "jobs", render: architecturePages.renderCandidate},
  {pattern: /^architectures\/([^/]+)$/, nav: "new-architecture",
   render: architecturePages.renderArchitecture},
  {pattern: /^new\/search$/, nav: "new-search", render: submitPages.renderSearchForm},
  {pattern: /^new\/architecture$/, nav: "new-architecture",
   render: submitPages.renderArchitectureForm},
  {pattern: /^tasks$/, nav: "tasks", render: tasksPage.render},
  {pattern: /^settings$/, nav: "settings", render: renderSettings},
];

/** Runs `task` now and then every `ms` milliseconds until it returns false or the page is left;
 * ticks are skipped while the tab is hidden. */
function makePoll(signal) {
  return (task, ms) => {
    let timer = null;
    const tick = async () => {
      if (signal.aborted) return;
      let again = true;
      if (!document.hidden) {
        try {
          again = (await task()) !== false;
        } catch (error) {
          if (error.name === "AbortError") return;
          again = true;  // the page shows the error; keep trying, the service may come back
        }
      }
      if (again && !signal.aborted) timer = setTimeout(tick, ms);
    };
    signal.addEventListener("abort", () => clearTimeout(timer));
    return tick();
  };
}

/** A route parameter as typed; a malformed %-escape is kept as it is (the API will say that no
 * such id exists) rather than stop the router. */
function safeDecode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

let current = null;

async function navigate() {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  const path = location.hash.replace(/^#\/?/, "").replace(/\/+$/, "");
  banner.hidden = true;
  let match = null;
  let found = null;
  for (const candidate of ROUTES) {
    match = candidate.pattern.exec(path);
    if (match) {
      found = candidate;
      break;
    }
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", Boolean(found) && link.dataset.nav === found.nav);
  }
  view.replaceChildren();
  if (!found) {
    view.append(h("section", {class: "card"}, h("h1", null, "Not found"),
                  h("p", null, "No page at this address. ", h("a", {href: route("jobs")}, "Search jobs"))));
    return;
  }
  const ctx = {config, signal: controller.signal, poll: makePoll(controller.signal)};
  try {
    await found.render(view, match.slice(1).map(safeDecode), ctx);
  } catch (error) {
    if (error.name !== "AbortError") console.error(error);
  }
}

function showUnauthorized(event) {
  const problem = event.detail || {};
  banner.replaceChildren(
    h("strong", null, getApiKey() ? "The API key was refused. " : "This service needs an API key. "),
    problem.detail ? h("span", null, String(problem.detail), " ") : null,
    h("a", {href: route("settings")}, "Set the key"));
  banner.hidden = false;
}

function updateKeyNav() {
  const link = document.getElementById("nav-key");
  link.textContent = getApiKey() ? "API key ✓" : "API key";
}

function renderSettings(root) {
  const input = h("input", {type: "password", id: "api-key", name: "api-key",
                            autocomplete: "off", spellcheck: "false", value: getApiKey()});
  const status = h("p", {class: "muted", role: "status"});
  const form = h("form", {class: "form card", id: "key-form"},
    h("h1", null, "API key"),
    h("p", null, config.auth_required
      ? "This service requires an API key for its /v1 API. Paste yours: it is kept in this browser "
        + "(localStorage) and sent as an Authorization: Bearer header."
      : "This service accepts requests without a key. If keys are turned on later, paste yours here; "
        + "it is kept in this browser (localStorage)."),
    h("label", null, "Key", input),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary"}, "Save"),
      h("button", {type: "button", id: "forget-key",
                   onclick: () => {
                     setApiKey("");
                     input.value = "";
                     updateKeyNav();
                     status.textContent = "Key removed.";
                   }}, "Forget")),
    status);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    updateKeyNav();
    status.textContent = "Saved.";
    location.hash = route("jobs");
  });
  root.append(form);
}

window.addEventListener("nas:unauthorized", showUnauthorized);
window.addEventListener("hashchange", navigate);
document.getElementById("version").textContent = config.version ? `nas-service ${config.version}` : "nas-service";
updateKeyNav();
if (config.auth_required && !getApiKey() && !location.hash.startsWith("#/settings")) {
  location.hash = route("settings");  // navigates through the hashchange listener
} else {
  navigate();
}
