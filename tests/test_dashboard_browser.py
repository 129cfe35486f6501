"""The web dashboard in a real browser: Debian's chromium driven by Playwright, against
``python -m nas_service serve`` as a real uvicorn process (SQLite in a temporary folder,
its worker process, a tiny GHN) with API keys on, so the key flow is exercised too.

Every check compares what the page shows with what the API answers. Screenshots go to
``tests/artifacts/``; with ``NAS_UPDATE_DOCS_IMAGES=1`` the two in ``docs/images/`` that the
README and docs/dashboard.md show are regenerated as well, from a server running the bundled GHN
(off by default, so a test run never changes tracked files)::

    NAS_UPDATE_DOCS_IMAGES=1 .venv/bin/pytest -q tests/test_dashboard_browser.py

chromium: ``make test`` installs the Debian package when it is missing (as root). Without it the
module skips, except under CI (``$CI`` set), where it fails: CI must run these tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("service_support")

from service_support import (  # noqa: E402
    SMALL_FLOPS,
    free_port,
    requires_fashion_mnist,
    service_env,
    start_server,
    stop_server,
    tiny_graph_doc,
    wait_ready,
)

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
DOCS_IMAGES = REPO / "docs" / "images"
UPDATE_DOCS_ENV = "NAS_UPDATE_DOCS_IMAGES"
DOCS_EVAL_IMAGES = 1000
CHROMIUM_ENV = "NAS_TEST_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
API_KEY = "dashboard-test-key"
VIEWPORT = {"width": 1280, "height": 800}
JOB_SECONDS = 90_000  # ms: the longest a search of the tests may take on a loaded machine
MAX_SEED = 2**63 - 1
SEARCH_CANDIDATES = 30  # more than one 25-row page, so the table's cursor paging is used


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _chromium() -> str:
    """The browser binary: $NAS_TEST_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    names = [os.environ[CHROMIUM_ENV]] if os.environ.get(CHROMIUM_ENV) else list(CHROMIUM_NAMES)
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    _unavailable(f"no chromium found (looked for {', '.join(names)}); install it with "
                 "'apt-get install chromium' (make test does, as root) or set " + CHROMIUM_ENV)
    raise AssertionError("unreachable")


# ---- fixtures: one server and one browser for the module ------------------------------------


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, ranked_tiny_ghn_path: Path
             ) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if os.environ.get(UPDATE_DOCS_ENV) == "1":
        # The docs' pictures show the bundled GHN's scores (on 1000 images), not the tiny
        # untrained one's; the checks below hold for either.
        from nas_service.ghn.checkpoint import bundled_checkpoint_path

        env = service_env(tmp_path_factory.mktemp("dashboard") / "state",
                          bundled_checkpoint_path(), NAS_API_KEYS=API_KEY,
                          NAS_EVAL_IMAGES=str(DOCS_EVAL_IMAGES))
    else:
        # With a ranking head, as the bundled GHN has: jobs rank by its estimate.
        env = service_env(tmp_path_factory.mktemp("dashboard") / "state", ranked_tiny_ghn_path,
                          NAS_API_KEYS=API_KEY)
    server = start_server(env, port)
    try:
        wait_ready(base, server)
        yield base
    finally:
        output = stop_server(server)
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[dev]'")
    playwright = sync_playwright().start()
    try:
        # Playwright passes --no-sandbox (chromium refuses to run its sandbox as root).
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()
    finally:
        playwright.stop()


class Tab:
    """A page in a fresh browser context, with the uncaught script errors it raised."""

    def __init__(self, browser: Any, base_url: str, api_key: str | None) -> None:
        # Reduced motion: no transitions, so a screenshot never catches a bar half-way.
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True,
                                           reduced_motion="reduce")
        if api_key is not None:
            self.context.add_init_script(
                f"localStorage.setItem('nas-service.api-key', {json.dumps(api_key)})")
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.base_url = base_url
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        # 401/404/422 answers log "Failed to load resource": expected, the tests cause them.
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" and "Failed to load resource" not in m.text else None)

    def goto(self, fragment: str = "") -> Any:
        self.page.goto(f"{self.base_url}/{fragment}")
        return self.page

    def screenshot(self, name: str, *, docs: str | None = None) -> None:
        self.page.mouse.move(4, VIEWPORT["height"] - 4)  # no hover effect in the picture
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))
        if docs and os.environ.get(UPDATE_DOCS_ENV) == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(DOCS_IMAGES / docs))


@pytest.fixture
def tab(browser: Any, base_url: str) -> Iterator[Tab]:
    """A page whose browser already holds the API key."""
    t = Tab(browser, base_url, API_KEY)
    yield t
    t.context.close()
    assert not t.errors, t.errors


# ---- helpers -----------------------------------------------------------------------------------


def _percent(value: float) -> str:
    """As the page writes an accuracy: JavaScript's toFixed(2) of value * 100, which rounds an
    exact tie up (Python's format would round 15.625 to 15.62)."""
    exact = Decimal(value * 100)  # the double's exact value, as toFixed sees it
    return f"{exact.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)} %"


def _pareto_ids(candidates: list[dict[str, Any]], metric: str) -> set[str]:
    """The dashboard's rule, written again: sorted by size then accuracy (best first), a point is
    on the front when it is more accurate than every point before it."""
    points = [c for c in candidates if c["status"] == "scored" and c["score"] is not None]
    front, best = set(), float("-inf")
    for c in sorted(points, key=lambda c: (c[metric], -c["score"])):
        if c["score"] > best:
            front.add(c["id"])
            best = c["score"]
    return front


def _all_candidates(api: httpx.Client, job_id: str, order_by: str) -> list[dict[str, Any]]:
    items, url = [], f"/v1/search-jobs/{job_id}/candidates?order_by={order_by}&limit=500"
    while url:
        page = api.get(url).json()
        items += page["items"]
        url = page["next"]
    return items


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    length = int.from_bytes(data[:8], "little")
    assert 0 < length < len(data)
    return json.loads(data[8:8 + length])["__metadata__"]


def _column(page: Any, attribute: str) -> list[str]:
    return page.eval_on_selector_all(
        "#candidates-table tbody tr[data-candidate-id]",
        f"rows => rows.map(r => r.dataset.{attribute})")


def _y_title(page: Any) -> str:
    """The scatter plot's y axis title (its tooltip is a child element)."""
    return page.eval_on_selector("svg.scatter .y-title", "e => e.firstChild.nodeValue")


def _wait_for_rows(page: Any, ids: list[str]) -> None:
    """Waits until the candidate table lists exactly ``ids``, in order."""
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#candidates-table tbody tr[data-candidate-id]')]"
        ".map(r => r.dataset.candidateId).join() === ids.join()", arg=ids)


def _big_graph(blocks: int = 70) -> dict[str, Any]:
    """A graph of a few hundred nodes: residual blocks with a projection branch, and a concat
    of every tenth block's output at the end (edges that skip many layers)."""
    from nas_service.graph import GraphBuilder

    b = GraphBuilder((1, 28, 28), name="big-residual")
    x = b.add("conv2d", b.input, out_channels=4, kernel_size=3, padding=1)
    taps = []
    for i in range(blocks):
        y = b.add("conv2d", x, out_channels=4, kernel_size=3, padding=1, bias=False)
        y = b.add("batch_norm", y)
        y = b.add("relu", y)
        z = b.add("conv2d", x, out_channels=4, kernel_size=1, bias=False)
        x = b.add("relu", b.add("add", x, y, z))
        if i % 10 == 9:
            taps.append(b.add("global_avg_pool", x))
    x = b.add("concat", *taps)
    return b.build(b.add("linear", x, out_features=10), num_classes=10).to_dict()


# ---- tests -------------------------------------------------------------------------------------


def test_page_and_files_are_served_with_a_strict_policy(base_url: str) -> None:
    page = httpx.get(base_url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '"auth_required": true' in page.text
    script = httpx.get(base_url + "/dashboard/pages/job.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    missing = httpx.get(base_url + "/dashboard/../nas_service/settings.py")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(base_url + "/dashboard/nope.js").status_code == 404


def test_the_key_is_asked_for_refused_when_wrong_and_then_used(browser: Any,
                                                                base_url: str) -> None:
    t = Tab(browser, base_url, api_key=None)
    try:
        page = t.goto()
        page.wait_for_selector("#api-key")  # keys are on: the page opens on the key form
        assert page.evaluate("location.hash") == "#/settings"

        page.fill("#api-key", "not-the-key")
        page.click("#key-form button[type=submit]")
        problem = page.wait_for_selector("#view .problem")
        assert "Unauthorized (401)" in problem.inner_text()
        assert "not valid" in problem.inner_text()
        assert page.is_visible("#banner") and "refused" in page.inner_text("#banner")

        page.click("#banner a")
        page.fill("#api-key", API_KEY)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#jobs-table")
        page.wait_for_function("() => !document.querySelector('#view .problem')")
        assert page.evaluate("localStorage.getItem('nas-service.api-key')") == API_KEY
        assert page.inner_text("#nav-key") == "API key ✓"
    finally:
        t.context.close()
    assert not t.errors, t.errors


def test_unknown_ids_and_addresses_show_a_problem(tab: Tab) -> None:
    page = tab.goto(f"#/jobs/{'0' * 32}")
    assert "Search job not found (404)" in page.wait_for_selector("#view .problem").inner_text()
    page = tab.goto("#/candidates/%zz")  # a malformed escape reaches the API as typed
    assert "Candidate not found (404)" in page.wait_for_selector("#view .problem").inner_text()
    page = tab.goto("#/architectures/<b>x<b>")
    assert "Architecture not found (404)" in page.wait_for_selector("#view .problem").inner_text()
    assert page.locator("#view b").count() == 0 and "<b>x<b>" in page.inner_text("#view")
    page = tab.goto("#/nowhere")
    assert page.wait_for_selector("#view h1").inner_text() == "Not found"


def test_scoring_an_architecture_by_space_and_seed(tab: Tab, api: httpx.Client) -> None:
    page = tab.goto("#/new/architecture")
    page.select_option("#architecture-form select[name=space]", "cells")
    page.fill("#architecture-form input[name=seed]", "3")
    page.click("#architecture-form button[type=submit]")
    card = page.wait_for_selector("#architecture-result .architecture", timeout=60_000)
    arch = api.get(f"/v1/architectures/{card.get_attribute('data-architecture-id')}").json()
    assert arch["name"] == "cells/seed=3"
    assert page.inner_text("#architecture-result .score-value") == _percent(arch["score"]["value"])
    nodes = arch["graph"]["nodes"]
    assert page.inner_text("#arch-nodes .stat-value") == str(len(nodes))
    assert f"{arch['num_parameters']:,}" == page.get_attribute("#arch-params", "title")

    # The picture: one box per node, coloured by op (one colour per op), edges, a legend.
    drawn = page.eval_on_selector_all(
        "#architecture-result .graph-svg .node",
        "gs => gs.map(g => [g.dataset.nodeId, g.dataset.op, g.querySelector('rect')"
        ".getAttribute('fill'), g.transform.baseVal.getItem(0).matrix.f])")
    assert sorted(d[0] for d in drawn) == sorted(n["id"] for n in nodes)
    fill_of_op = {}
    for _, op, fill, _ in drawn:
        assert fill_of_op.setdefault(op, fill) == fill, op
    ops = {n["op"] for n in nodes}
    assert set(fill_of_op) == ops and len(set(fill_of_op.values())) == len(ops) >= 5
    edges = {(i, n["id"]) for n in nodes for i in n.get("inputs", [])}
    assert page.locator("#architecture-result .graph-svg path.edge").count() == len(edges)
    top = {node_id: y for node_id, _, _, y in drawn}
    assert all(top[target] > top[source] for source, target in edges)  # layered by depth
    legend = page.eval_on_selector_all("#architecture-result .legend-item",
                                        "bs => bs.map(b => b.dataset.op)")
    assert sorted(legend) == sorted(ops)

    # Zoom and node details.
    svg = page.locator("#architecture-result .graph-svg")
    width = float(svg.get_attribute("width"))
    page.click("#architecture-result button[aria-label='Zoom in']")
    assert float(svg.get_attribute("width")) == pytest.approx(width * 1.25, abs=1)
    page.click("#architecture-result .graph-svg .node[data-node-id='stem_conv1']")
    assert "out_channels" in page.inner_text("#architecture-result .node-details")

    # The architecture's own page shows the same, and is the docs' picture of one.
    page = tab.goto(f"#/architectures/{arch['id']}")
    page.wait_for_selector(".graph-svg .node")
    assert page.inner_text(".score-value") == _percent(arch["score"]["value"])
    assert "predicted accuracy" in page.inner_text("#arch-score")
    ranking = page.inner_text("#arch-ranking")
    assert ranking.startswith(f"{_percent(arch['score']['ranking']['value'])}: test accuracy after")
    # The test's head was fit by leave-one-out on its own trained architectures, and says so.
    assert f"Kendall τ {arch['score']['ranking']['kendall_tau']:.2f}" in ranking
    assert "leave-one-out" in ranking
    tab.screenshot("architecture.png")
    page.click(".graph-svg .node[data-node-id='stem_conv1']")  # its attributes, beside
    page.eval_on_selector(".graph-view", "e => e.closest('.card').scrollIntoView()")
    tab.screenshot("architecture-graph.png", docs="dashboard-architecture.png")


def test_invalid_submissions_show_the_problem_by_the_form(tab: Tab, api: httpx.Client) -> None:
    page = tab.goto("#/new/architecture")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.check("#architecture-form input[name=source][value=json]")

    # Not JSON: refused before anything is sent, with the parser's message.
    page.fill("#architecture-form textarea[name=graph]", '{"format": "nas-graph/1", nodes: [')
    page.click("#architecture-form button[type=submit]")
    problem = page.wait_for_selector("#architecture-problem .problem").inner_text()
    assert "Invalid JSON" in problem and "is not valid JSON" in problem
    assert page.is_visible("#architecture-form textarea.invalid")
    assert posts == []

    # JSON, but not a valid graph: the API's problem, every located error shown.
    bad = {"format": "nas-graph/1",
           "nodes": [{"id": "x", "op": "input", "shape": [1, 28, 28]},
                     {"id": "c", "op": "conv2d", "inputs": ["x"], "kernel_size": 3},
                     {"id": "out", "op": "output", "inputs": ["c"], "num_classes": 10}]}
    expected = api.post("/v1/architectures", json={"graph": bad}).json()
    assert expected["status"] == 422 and expected["errors"]
    page.fill("#architecture-form textarea[name=graph]", json.dumps(bad))
    page.click("#architecture-form button[type=submit]")
    page.wait_for_selector("#architecture-problem .problem-errors")
    problem = page.inner_text("#architecture-problem .problem")
    assert f"{expected['title']} (422)" in problem and expected["detail"] in problem
    for error in expected["errors"]:
        assert error["location"] in problem and error["message"] in problem
    assert page.is_visible("#architecture-form .field-error")

    # A graph name is user input: shown as text, never parsed as markup.
    hostile = "<img src=x onerror=\"window.__pwned = 1\"> & </script>"
    page.fill("#architecture-form textarea[name=graph]", json.dumps(tiny_graph_doc(5, name=hostile)))
    page.click("#architecture-form button[type=submit]")
    page.wait_for_selector("#architecture-result .arch-name", timeout=60_000)
    assert page.inner_text("#architecture-result .arch-name") == hostile
    assert page.locator("#view img").count() == 0
    assert page.evaluate("window.__pwned") is None

    # An uploaded file: none chosen is said so; a chosen one is scored.
    page.check("#architecture-form input[name=source][value=file]")
    page.click("#architecture-form button[type=submit]")
    assert "No file chosen" in page.wait_for_selector("#architecture-problem .problem").inner_text()
    page.set_input_files("#architecture-form input[name=graph-file]", files=[{
        "name": "tiny.json", "mimeType": "application/json",
        "buffer": json.dumps(tiny_graph_doc(6)).encode()}])
    page.click("#architecture-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#architecture-result .arch-name')"
                           "?.textContent === 'tiny-6'", timeout=60_000)
    assert page.inner_text("#architecture-problem") == ""

    # The search form: the API's field errors land next to their fields.
    page = tab.goto("#/new/search")
    page.fill("#search-form input[name=seed]", "seven")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-problem .problem")
    assert "Invalid request (422)" in page.inner_text("#search-problem")
    assert page.is_visible("#search-form input[name=seed].invalid")
    page.fill("#search-form input[name=seed]", "7")
    page.fill("#search-form input[name=candidates]", "100000")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-form input[name=candidates].invalid")
    assert "at most 10000 candidates per job" in page.inner_text("#search-problem")
    assert not page.is_visible("#search-form input[name=seed].invalid")
    assert page.evaluate("location.hash") == "#/new/search"
    assert api.get("/v1/search-jobs?status=queued").json()["items"] == []


def _run_search_form(tab: Tab, api: httpx.Client, selects: dict[str, str],
                     inputs: dict[str, str]) -> tuple[Any, dict]:
    """Fills in and submits the search form; the job page once the job succeeded, and the
    job as the API answers it."""
    page = tab.goto("#/new/search")
    for name, value in selects.items():
        page.select_option(f"#search-form select[name={name}]", value)
    for name, value in inputs.items():
        page.fill(f"#search-form input[name={name}]", value)
    page.click("#search-form button[type=submit]")
    page.wait_for_function("() => location.hash.startsWith('#/jobs/')")
    job_id = page.evaluate("location.hash").split("/")[-1]
    page.wait_for_selector("[data-job-status=succeeded]", timeout=JOB_SECONDS)
    return page, api.get(f"/v1/search-jobs/{job_id}").json()


def test_a_search_job_live_with_its_table_plot_and_candidates(tab: Tab,
                                                              api: httpx.Client) -> None:
    page, job = _run_search_form(tab, api, {"space": "cells"}, {
        "seed": str(MAX_SEED),  # past 2^53: sent exactly
        "candidates": str(SEARCH_CANDIDATES), "max_flops": str(SMALL_FLOPS)})
    job_id = job["id"]
    assert job["status"] == "succeeded" and job["constraints"]["max_flops"] == SMALL_FLOPS
    assert job["seed"] == MAX_SEED and str(MAX_SEED) in page.inner_text("#view .facts")
    assert job["ranking"]["method"] == "ghn"
    assert page.inner_text("#job-ranking") == "the GHN's score"
    assert page.get_attribute("#job-progress", "data-percent") == "100.0"
    assert page.inner_text("#job-progress") == f"{SEARCH_CANDIDATES} / {SEARCH_CANDIDATES} candidates"
    assert not page.is_visible("#cancel-job")  # finished: nothing to cancel

    by_index = _all_candidates(api, job_id, "index")
    by_score = _all_candidates(api, job_id, "score")
    scored = [c for c in by_index if c["status"] == "scored"]
    assert len(by_index) == len(scored) == SEARCH_CANDIDATES  # the space meets max_flops

    # Scatter: one point per scored candidate; the front as computed from the API's numbers.
    page.wait_for_function(
        f"() => document.querySelector('svg.scatter')?.dataset.points == {len(scored)}")
    # The GHN has a ranking head: the scores are named as its estimates, never as accuracies.
    assert all(c["score_kind"] == "estimated-trained-accuracy" for c in scored)
    assert page.inner_text("#scatter-title") == "Estimated trained accuracy against size"
    assert _y_title(page) == "estimated trained accuracy"
    # The target comes from the best candidate's architecture, read after the candidates.
    page.wait_for_function("() => document.querySelector('#scatter-legend').textContent"
                           ".includes('estimate of test accuracy after 5 epochs')")
    assert "the best estimated trained accuracy for its size" in page.inner_text("#scatter-legend")
    best = job["best_candidate"]
    assert page.inner_text("#best-candidate").startswith(
        f"#{best['index']} · est. trained accuracy {_percent(best['score'])} · predicted "
        f"{_percent(best['predicted_accuracy'])} · ")
    assert page.inner_text("#best-candidate").endswith(" parameters")
    assert page.locator("svg.scatter circle.point").count() == len(scored)
    front = page.eval_on_selector_all("svg.scatter circle.pareto",
                                      "cs => cs.map(c => c.dataset.candidateId)")
    assert set(front) == _pareto_ids(by_index, "num_parameters")
    tab.screenshot("job.png", docs="dashboard-job.png")
    page.click("button.toggle[data-metric=flops]")
    page.wait_for_selector("svg.scatter[data-metric=flops]")
    front_flops = page.eval_on_selector_all("svg.scatter circle.pareto",
                                            "cs => cs.map(c => c.dataset.candidateId)")
    assert set(front_flops) == _pareto_ids(by_index, "flops")

    # Table: the API's score order, 25 rows, then the next page through the cursor.
    _wait_for_rows(page, [c["id"] for c in by_score[:25]])
    headers = page.eval_on_selector_all(
        "#candidates-table th", "ths => ths.map(th => [th.dataset.column, th.textContent, th.title])")
    assert [h[0] for h in headers] == ["index", "status", "score", "predicted_accuracy",
                                       "fidelity", "num_parameters", "flops", "seconds",
                                       "reason"]
    score_head, predicted_head = headers[2], headers[3]
    assert score_head[1].startswith("Est. trained acc.")
    assert "ranking head's estimate of test accuracy after 5 epochs" in score_head[2]
    assert predicted_head[1].startswith("Predicted acc.")
    assert "predicted weights" in predicted_head[2]
    assert [float(p) for p in _column(page, "predicted")] == [
        c["predicted_accuracy"] for c in by_score[:25]]
    page.click("button.sort[data-sort=predicted_accuracy]")  # best first, within the page
    predicted = [float(p) for p in _column(page, "predicted")]
    assert predicted == sorted(predicted, reverse=True)
    assert "Sorted by predicted accuracy within this page" in page.inner_text("#sort-hint")
    page.click("button.sort[data-sort=score]")
    _wait_for_rows(page, [c["id"] for c in by_score[:25]])
    page.click("#page-next")
    _wait_for_rows(page, [c["id"] for c in by_score[25:]])
    assert page.inner_text("#page-label") == "Page 2" and page.is_disabled("#page-next")
    page.click("#page-prev")
    _wait_for_rows(page, [c["id"] for c in by_score[:25]])

    page.click("button.sort[data-sort=num_parameters]")
    params = [int(p) for p in _column(page, "params")]
    assert params == sorted(params) and len(params) == 25
    page.click("button.sort[data-sort=num_parameters]")
    params = [int(p) for p in _column(page, "params")]
    assert params == sorted(params, reverse=True)
    page.click("button.sort[data-sort=flops]")
    flops = [int(f) for f in _column(page, "flops")]
    assert flops == sorted(flops)
    page.click("button.sort[data-sort=index]")
    _wait_for_rows(page, [c["id"] for c in by_index[:25]])
    assert [int(i) for i in _column(page, "index")] == list(range(25))

    # The jobs list shows it finished, with its best score, named, and its predicted accuracy.
    page = tab.goto("#/jobs")
    row = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    assert row.get_attribute("data-status") == "succeeded"
    assert f"{SEARCH_CANDIDATES} / {SEARCH_CANDIDATES}" in row.inner_text()
    assert (f"{_percent(best['score'])} · pred. {_percent(best['predicted_accuracy'])}"
            in row.inner_text())
    assert page.text_content("#jobs-best") == "Best est. trained acc."

    # A point of the plot opens its candidate: scores, graph, and a working download.
    page = tab.goto(f"#/jobs/{job_id}")
    page.click(f"svg.scatter circle[data-candidate-id='{best['id']}']")
    page.wait_for_function(f"() => location.hash == '#/candidates/{best['id']}'")
    page.wait_for_selector(".architecture-view .graph-svg .node")
    architecture = api.get(best["architecture_url"]).json()
    assert page.inner_text(".score-value") == _percent(architecture["score"]["value"])
    # The job ranks by the estimated trained accuracy when the GHN has a ranking head.
    ranked_by = architecture["score"].get("ranking") or architecture["score"]
    assert best["score"] == ranked_by["value"]
    assert best["predicted_accuracy"] == architecture["score"]["value"]
    assert page.inner_text("#candidate-score-label") == "Estimated trained accuracy"
    assert "test accuracy after 5 epochs" in page.get_attribute("#candidate-score-label", "title")
    assert page.inner_text("#candidate-score") == _percent(best["score"])
    assert page.inner_text("#candidate-predicted") == _percent(best["predicted_accuracy"])
    assert page.locator(".graph-svg .node").count() > 5
    link = page.locator("#download-checkpoint")
    assert link.get_attribute("href") == best["checkpoint_url"]
    with page.expect_download() as download_info:
        link.click()
    saved = Path(download_info.value.path()).read_bytes()
    assert download_info.value.suggested_filename == f"candidate-{job_id}-{best['index']}.safetensors"
    direct = api.get(link.get_attribute("href"))
    assert direct.status_code == 200 and direct.content == saved
    assert direct.headers["etag"] == f'"{hashlib.sha256(saved).hexdigest()}"'
    metadata = _safetensors_metadata(saved)
    assert metadata["format"] == "nas-checkpoint/1"
    assert metadata["content_hash"] == architecture["content_hash"]
    tab.screenshot("candidate.png")


def _json_route(body: Any) -> Any:
    return lambda route: route.fulfill(status=200, content_type="application/json",
                                       body=json.dumps(body))


def test_scores_of_a_ghn_without_a_ranking_head_are_named_predicted_accuracy(
        tab: Tab, api: httpx.Client) -> None:
    # This server's GHN has a ranking head; the answers of one without are played to the page.
    arch = api.post("/v1/architectures", json={"space": "cells", "seed": 5}).json()
    arch["score"]["ranking"] = None
    job_id = "f" * 32
    candidates = [{
        "id": f"{i:032x}", "job_id": job_id, "index": i, "status": "scored", "score": score,
        "score_kind": "predicted-accuracy", "predicted_accuracy": score, "reason": None,
        "num_parameters": arch["num_parameters"] + i, "flops": arch["flops"] + i, "seconds": 0.1,
        "architecture_id": arch["id"], "architecture_url": f"/v1/architectures/{arch['id']}",
        "checkpoint_url": f"/v1/candidates/{i:032x}/checkpoint",
        "created_at": arch["created_at"]} for i, score in enumerate((0.75, 0.5))]
    job = {"id": job_id, "status": "succeeded", "space": "cells", "task": "fashion-mnist",
           "strategy": "random", "seed": 1, "budget": {"candidates": 2, "seconds": None},
           "constraints": {"max_parameters": None, "max_flops": None},
           "progress": {"done": 2, "total": 2, "fraction": 1.0}, "rate": 2.0,
           "best_candidate": candidates[0],
           "timings": {"queued_seconds": 0.1, "running_seconds": 1.0}, "error": None,
           "attempts": 1, "cancel_requested": False, "created_at": arch["created_at"],
           "started_at": arch["created_at"], "finished_at": arch["created_at"],
           "links": {"self": f"/v1/search-jobs/{job_id}",
                     "candidates": f"/v1/search-jobs/{job_id}/candidates",
                     "cancel": f"/v1/search-jobs/{job_id}/cancel"}}
    page = tab.page
    page.route(re.compile(f"/v1/search-jobs/{job_id}$"), _json_route(job))
    page.route(re.compile(f"/v1/search-jobs/{job_id}/candidates\\?"),
               _json_route({"items": candidates, "next_cursor": None, "next": None}))
    page.route(re.compile(r"/v1/search-jobs\?"),
               _json_route({"items": [job], "next_cursor": None, "next": None}))
    page.route(re.compile(f"/v1/candidates/{candidates[0]['id']}$"), _json_route(candidates[0]))
    page.route(re.compile(f"/v1/architectures/{arch['id']}$"), _json_route(arch))

    page = tab.goto(f"#/jobs/{job_id}")
    page.wait_for_selector("svg.scatter[data-points='2']")
    _wait_for_rows(page, [c["id"] for c in candidates])
    columns = page.eval_on_selector_all("#candidates-table th", "ths => ths.map(th => th.dataset.column)")
    assert "predicted_accuracy" not in columns  # the score is the predicted accuracy: once
    assert page.text_content("#candidates-table th[data-column=score]").startswith("Predicted acc.")
    assert "no ranking head" in page.get_attribute("#candidates-table th[data-column=score]",
                                                   "title")
    assert page.inner_text("#scatter-title") == "Predicted accuracy against size"
    assert _y_title(page) == "predicted accuracy"
    assert "the best predicted accuracy for its size" in page.inner_text("#scatter-legend")
    assert page.inner_text("#best-candidate").startswith("#0 · predicted accuracy 75.00 % · ")

    page = tab.goto("#/jobs")
    row = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    assert page.text_content("#jobs-best") == "Best predicted acc."
    assert "75.00 %" in row.inner_text() and "pred." not in row.inner_text()

    page = tab.goto(f"#/candidates/{candidates[0]['id']}")
    page.wait_for_selector(".architecture-view")
    assert page.inner_text("#candidate-score-label") == "Predicted accuracy"
    assert page.locator("#candidate-predicted").count() == 0
    assert page.locator("#arch-ranking").count() == 0


def test_the_estimate_quotes_where_its_tau_was_measured(tab: Tab, api: httpx.Client) -> None:
    arch = api.post("/v1/architectures", json={"space": "cells", "seed": 5}).json()
    measured_on = "40 architectures of families neither the head nor the GHN was fit on"
    arch["score"]["ranking"] |= {"kendall_tau": 0.6152, "measured_on": measured_on}
    tab.page.route(re.compile(f"/v1/architectures/{arch['id']}$"), _json_route(arch))
    page = tab.goto(f"#/architectures/{arch['id']}")
    ranking = page.wait_for_selector("#arch-ranking").inner_text()
    assert f"(Kendall τ 0.62 on {measured_on})" in ranking
    assert "leave-one-out" not in ranking


def test_a_running_job_updates_live_and_can_be_cancelled(tab: Tab, api: httpx.Client) -> None:
    posted = api.post("/v1/search-jobs", json={
        "space": "cells", "seed": 11, "budget": {"candidates": 5000},
        "constraints": {"max_flops": SMALL_FLOPS}})
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]
    page = tab.goto(f"#/jobs/{job_id}")
    page.wait_for_selector("#job-progress")
    first = float(page.get_attribute("#job-progress", "data-percent"))
    # The page was not reloaded: the poll moved the bar.
    page.wait_for_function(
        f"() => Number(document.querySelector('#job-progress').dataset.percent) > {first}",
        timeout=JOB_SECONDS)
    assert page.get_attribute("[data-job-status]", "data-job-status") == "running"
    page.click("#cancel-job")
    page.wait_for_selector("[data-job-status=cancelled]", timeout=JOB_SECONDS)
    job = api.get(f"/v1/search-jobs/{job_id}").json()
    assert job["status"] == "cancelled" and 0 < job["progress"]["done"] < 5000
    assert not page.is_visible("#cancel-job")
    page.wait_for_function(f"() => document.querySelector('#job-progress .progress-label')"
                           f".textContent == '{job['progress']['done']} / 5000 candidates'")


def test_the_search_form_ranks_by_short_training_when_asked(tab: Tab, api: httpx.Client) -> None:
    page, job = _run_search_form(tab, api, {"space": "cells", "ranking": "short-training"},
                                 {"candidates": "1", "max_flops": str(SMALL_FLOPS)})
    assert job["ranking"]["method"] == "short-training" and job["ranking"]["steps"] == 8
    assert page.inner_text("#job-ranking").startswith(
        "short training, 8 SGD steps from the default initialisation")
    assert job["best_candidate"]["score_kind"] == "short-training-accuracy"
    assert page.inner_text("#best-candidate").startswith(
        f"#0 · after short training {_percent(job['best_candidate']['score'])} · predicted ")


def test_a_job_with_rungs_and_short_training_shows_the_fidelity_and_kind_of_every_score(
        tab: Tab, api: httpx.Client) -> None:
    full = api.get("/v1/hypernetworks").json()[0]["score"]["images"]
    posted = api.post("/v1/search-jobs", json={
        "space": "cells", "seed": 13, "budget": {"candidates": 4},
        "constraints": {"max_flops": SMALL_FLOPS},
        "fidelity": {"rungs": [16, full], "eta": 2},
        "ranking": {"method": "short-training", "steps": 2}})
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]
    page = tab.goto(f"#/jobs/{job_id}")
    page.wait_for_selector("[data-job-status=succeeded]", timeout=JOB_SECONDS)
    assert page.inner_text("#job-fidelity") == (
        f"16 → {full:,} images, best 1/2 promoted in brackets of 4")
    assert page.inner_text("#job-ranking").startswith(
        "short training, 2 SGD steps from the default initialisation")
    candidates = _all_candidates(api, job_id, "index")
    for c in candidates:
        row = page.wait_for_selector(f"#candidates-table tr[data-candidate-id='{c['id']}']")
        expected = (f"{c['eval_images']:,} images · "
                    + ("full" if c["full_fidelity"] else f"rung {c['rung']}"))
        assert expected in row.inner_text()
    assert sum(c["full_fidelity"] for c in candidates) == 2
    best = api.get(f"/v1/search-jobs/{job_id}").json()["best_candidate"]
    page = tab.goto(f"#/candidates/{best['id']}")
    page.wait_for_selector("#candidate-fidelity")
    assert page.inner_text("#candidate-fidelity").startswith(f"{full:,} images · full (16: ")
    # The rung that ranks is the short training's, and the predicted accuracy stands beside it.
    assert best["score_kind"] == "short-training-accuracy"
    assert page.inner_text("#candidate-score-label") == "Accuracy after short training"
    assert page.inner_text("#candidate-predicted") == _percent(best["predicted_accuracy"])


def test_graphs_of_hundreds_of_nodes_are_laid_out_legibly(tab: Tab) -> None:
    doc = _big_graph()
    page = tab.goto("#/jobs")
    page.wait_for_selector("#jobs-table")
    layout = page.evaluate("""async (doc) => {
        const graph = await import('/dashboard/graph.js');
        const started = performance.now();
        const l = graph.layoutGraph(doc);
        const ms = performance.now() - started;
        const box = (n) => ({layer: n.layer, x: n.x, y: n.y, width: n.width});
        return {ms, width: l.width, height: l.height, layers: l.layers, nodeWidth: graph.NODE_WIDTH,
                nodes: l.nodes.map((n) => ({id: n.id, ...box(n)})),
                edges: l.edges.map((e) => ({from: e.from.id, to: e.to.id, via: e.via.map(box)}))};
    }""", doc)
    assert len(layout["nodes"]) == len(doc["nodes"]) > 400
    assert layout["ms"] < 3000, layout["ms"]
    nodes = {n["id"]: n for n in layout["nodes"]}
    boxes: dict[int, list[dict[str, Any]]] = {}
    for box in [*layout["nodes"], *(v for e in layout["edges"] for v in e["via"])]:
        assert box["width"] / 2 <= box["x"] <= layout["width"] - box["width"] / 2
        assert 0 < box["y"] < layout["height"]
        boxes.setdefault(box["layer"], []).append(box)
    for edge in layout["edges"]:
        low, high = nodes[edge["from"]]["layer"], nodes[edge["to"]]["layer"]
        assert low < high  # every edge points down
        # ... and passes each layer in between through a slot of its own.
        assert [v["layer"] for v in edge["via"]] == list(range(low + 1, high))
    for layer in boxes.values():  # nothing overlaps within a layer
        layer.sort(key=lambda b: b["x"])
        for a, b in pairwise(layer):
            assert b["x"] - a["x"] >= (a["width"] + b["width"]) / 2 - 1e-6

    # Every op of the format has a colour of its own, in the format's order.
    from nas_service.graph import OP_NAMES

    colours = page.evaluate("async () => (await import('/dashboard/graph.js')).OP_COLORS")
    assert list(colours) == list(OP_NAMES) and len(set(colours.values())) == len(OP_NAMES)

    # Drawn: every node, and the view zooms out to the width and back.
    page.evaluate("""async (doc) => {
        const graph = await import('/dashboard/graph.js');
        document.querySelector('#view').replaceChildren(graph.renderGraph(doc));
    }""", doc)
    page.wait_for_selector(".graph-svg .node")
    assert page.locator(".graph-svg .node").count() == len(doc["nodes"])
    page.click("button[data-zoom=fit]")
    fitted = float(page.get_attribute(".graph-svg", "width"))
    assert fitted <= page.eval_on_selector(".graph-scroll", "e => e.clientWidth")
    page.click("button[data-zoom=reset]")
    assert float(page.get_attribute(".graph-svg", "width")) == pytest.approx(layout["width"], abs=1)
