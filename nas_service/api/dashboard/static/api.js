// The /v1 API from the browser: the API key, JSON both ways (64-bit seeds included), and
// RFC 9457 problems turned into ApiError, which the pages show next to what failed.

const KEY_STORAGE = "nas-service.api-key";

export function getApiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";  // storage disabled: the key lives as long as the page
  }
}

export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Nothing to do: without storage the key cannot outlive the page.
  }
}

/** An error answer of the API (or a failure to reach it), as a problem object:
 * {type, title, status, detail, errors: [{location, node, field, message}]}. */
export class ApiError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
    this.status = problem.status ?? 0;
  }
}

/** A problem made here, for errors found before anything is sent (such as JSON that does not
 * parse), so the page shows them like the API's. */
export function localProblem(title, detail, errors) {
  return new ApiError({type: "about:blank", title, status: 0, detail, errors: errors || []});
}

// JSON numbers beyond 2^53 (seeds go to 2^63 - 1) lose digits as JS numbers. Parsing keeps such
// integers as their exact digit strings (JSON.parse's reviver sees the source text in current
// browsers), and encoding writes BigInt values as bare integers.
function reviveBigIntegers(key, value, context) {
  if (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)
      && context && typeof context.source === "string" && /^-?\d+$/.test(context.source)) {
    return context.source;
  }
  return value;
}

export function parseJSON(text) {
  return JSON.parse(text, reviveBigIntegers);
}

const BIG_MARK = "\u0000bigint:";

export function encodeJSON(value) {
  const text = JSON.stringify(value, (key, v) => (typeof v === "bigint" ? BIG_MARK + v : v));
  return text.replace(/"\\u0000bigint:(-?\d+)"/g, "$1");
}

function authHeaders() {
  const key = getApiKey();
  return key ? {"Authorization": `Bearer ${key}`} : {};
}

/** Only the API's own paths are ever fetched or linked: a URL taken from a response must be a
 * path under /v1/ of this origin. */
export function apiPath(url) {
  const text = String(url ?? "");
  if (!/^\/v1\/[A-Za-z0-9._~\/?=&%+-]*$/.test(text)) {
    throw localProblem("Unexpected URL", `the API returned a link that is not one of its own: ${text.slice(0, 80)}`);
  }
  return text;
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  const text = await response.text();
  if (type.includes("json")) {
    try {
      const body = parseJSON(text);
      if (body && typeof body === "object") {
        return {status: response.status, title: response.statusText || `HTTP ${response.status}`,
                ...body};
      }
    } catch {
      // fall through: a JSON content type with a body that is not JSON
    }
  }
  return {type: "about:blank", status: response.status,
          title: response.statusText || `HTTP ${response.status}`,
          detail: text.slice(0, 300) || `the server answered ${response.status}`};
}

/** `fetch` of an API path; a non-2xx answer throws ApiError with the answer's problem. */
async function send(method, path, {body, headers, signal} = {}) {
  const init = {method, signal, headers: {"Accept": "application/json, application/problem+json",
                                          ...authHeaders(), ...headers}};
  if (body !== undefined) {
    init.body = encodeJSON(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw localProblem("Cannot reach the service", String(error.message || error));
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401) {
      window.dispatchEvent(new CustomEvent("nas:unauthorized", {detail: problem}));
    }
    throw new ApiError(problem);
  }
  return response;
}

export async function get(path, options) {
  const response = await send("GET", path, options);
  return parseJSON(await response.text());
}

export async function post(path, body, options = {}) {
  const response = await send("POST", path, {...options, body});
  const text = await response.text();
  return {status: response.status, body: text ? parseJSON(text) : null};
}

/** Fetches a checkpoint with the key header and hands it to the browser as a file download.
 * Returns the number of bytes. */
export async function fetchFile(path, options) {
  const response = await send("GET", apiPath(path), options);
  const disposition = response.headers.get("content-disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  return {blob: await response.blob(), filename: match ? match[1] : "checkpoint.safetensors"};
}

/** Every page of a cursor listing, up to `maxItems` items. */
export async function getAll(path, {signal, maxItems = 10_000, pageSize = 500} = {}) {
  const items = [];
  let url = `${path}${path.includes("?") ? "&" : "?"}limit=${pageSize}`;
  while (url && items.length < maxItems) {
    const page = await get(url, {signal});
    items.push(...page.items);
    url = page.next ? apiPath(page.next) : null;
  }
  return items;
}
