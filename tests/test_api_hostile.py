"""Hostile and mistaken requests: every one gets an RFC 9457 problem with a 4xx status, and none
reaches the catch-all 500 handler (the TestClient re-raises anything that does, and the
``nas_http_unhandled_exceptions_total`` counter must stay at zero)."""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("service_support")

import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from service_support import assert_problem, requires_fashion_mnist, tiny_graph_doc  # noqa: E402

from nas_service.db import queue  # noqa: E402
from nas_service.db.engine import make_engine  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = [requires_fashion_mnist,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

JOB = {"space": "cells", "task": "fashion-mnist", "strategy": "random", "seed": 1,
       "budget": {"candidates": 3}}


@pytest.fixture
def hostile(make_client):
    """A client on a service with a 64 KiB body limit; checks after the test that nothing
    reached the catch-all handler."""
    client = make_client(max_body_bytes=64 * 1024, max_graph_nodes=64)
    yield client
    assert 'nas_http_unhandled_exceptions_total 0' in client.get("/metrics").text
    assert 'status="500"' not in client.get("/metrics").text


def _post_raw(client, path: str, content: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=content,
                       headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("content", [
    b"{", b"not json", b'{"graph": }', b"\xff\xfe\x00garbage", b"[1, 2",
    b'{"graph": {"format": "nas-graph/1", "nodes": [1e999999]}}',
])
def test_malformed_json_is_a_400_problem(hostile, content: bytes) -> None:
    for path in ("/v1/architectures", "/v1/search-jobs"):
        r = _post_raw(hostile, path, content)
        assert r.status_code in (400, 422), r.text
        assert_problem(r, r.status_code)


def test_deeply_nested_json_is_refused_not_crashed(hostile) -> None:
    depth = 20_000
    r = _post_raw(hostile, "/v1/architectures", b"[" * depth + b"]" * depth)
    assert_problem(r, r.status_code)
    assert r.status_code in (400, 413, 422)


@pytest.mark.parametrize("payload", [
    [], 5, "graph", None,
    {"graph": 5}, {"graph": []}, {"graph": "nas-graph/1"}, {"graph": {}},
    {"graph": {"format": "nas-graph/1", "nodes": "all of them"}},
    {"graph": {"format": "nas-graph/1", "nodes": [None, 1, "x"]}},
    {"graph": {"format": "nas-graph/2", "nodes": []}},
    {"space": 5, "seed": 1}, {"space": "cells", "seed": -1}, {"space": "cells", "seed": "7"},
    {"space": "cells", "seed": 2**70}, {"space": "cells", "seed": 1.5},
    {"space": "cells", "seed": 1, "task": ["fashion-mnist"]},
    {"space": "cells", "seed": 1, "surprise": True},
])
def test_wrong_types_in_an_architecture_request_are_422(hostile, payload) -> None:
    assert_problem(hostile.post("/v1/architectures", json=payload), 422)


@pytest.mark.parametrize("change", [
    {"budget": {"candidates": 0}}, {"budget": {"candidates": "many"}}, {"budget": None},
    {"budget": {"candidates": 10**9}}, {"budget": {"candidates": 2, "seconds": -1}},
    {"budget": {"candidates": 2, "seconds": float("inf")}},
    {"strategy": "gradient-descent"}, {"space": "imaginary"}, {"task": "imagenet"},
    {"seed": -5}, {"constraints": {"max_parameters": 0}}, {"constraints": {"max_flops": "lots"}},
    {"constraints": {"max_depth": 3}}, {"extra": 1},
])
def test_wrong_search_job_requests_are_422(hostile, change) -> None:
    body = {**JOB, **change}
    content = json.dumps(body, allow_nan=True).encode()
    body = assert_problem(_post_raw(hostile, "/v1/search-jobs", content), 422)
    assert body["errors"] and all(e["location"].startswith("/body") for e in body["errors"])


def test_a_body_over_the_limit_is_413_by_content_length(hostile) -> None:
    big = json.dumps({"graph": tiny_graph_doc(), "padding": "x" * 70_000}).encode()
    assert_problem(_post_raw(hostile, "/v1/architectures", big), 413, "body-too-large")


def test_a_streamed_body_over_the_limit_is_413_without_content_length(hostile) -> None:
    def chunks():
        for _ in range(100):
            yield b" " * 1024  # 100 KiB of JSON whitespace, no Content-Length

    r = hostile.post("/v1/architectures", content=chunks(),
                     headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "body-too-large")


def test_a_lying_content_length_is_refused(hostile) -> None:
    r = _post_raw(hostile, "/v1/architectures", b"{}", **{"content-length": "abc"})
    assert r.status_code in (400, 413, 422)


def test_a_graph_over_the_limits_is_422(hostile) -> None:
    nodes = [{"id": "input", "op": "input", "shape": [1, 28, 28]}]
    nodes += [{"id": f"r{i}", "op": "relu", "inputs": [nodes[-1]["id"] if i == 0 else f"r{i-1}"]}
              for i in range(200)]
    body = assert_problem(hostile.post("/v1/architectures", json={
        "graph": {"format": "nas-graph/1", "nodes": nodes}}), 422, "invalid-graph")
    assert len(body["errors"]) <= 100
    huge_conv = tiny_graph_doc(4)
    huge_conv["nodes"][1]["out_channels"] = 10**9
    assert_problem(hostile.post("/v1/architectures", json={"graph": huge_conv}), 422,
                   "invalid-graph")


@pytest.mark.parametrize("path", [
    "/v1/architectures/x", "/v1/architectures/" + "a" * 5000, "/v1/architectures/%00",
    "/v1/architectures/x/checkpoint", "/v1/search-jobs/x", "/v1/search-jobs/x/candidates",
    "/v1/candidates/x", "/v1/candidates/x/checkpoint", "/v1/nothing-here", "/v2/architectures",
])
def test_unknown_ids_and_paths_are_404(hostile, path: str) -> None:
    assert_problem(hostile.get(path), 404)


def test_cancel_of_an_unknown_job_is_404(hostile) -> None:
    assert_problem(hostile.post("/v1/search-jobs/nope/cancel"), 404, "not-found")


def test_a_wrong_method_is_a_405_problem(hostile) -> None:
    assert_problem(hostile.delete("/v1/architectures"), 405)
    assert_problem(hostile.put("/v1/search-jobs"), 405)


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "e30", "eyJsIjoiam9icyIsImsiOlsxXX0",
                                    "x" * 2000, "%ff"])
def test_bad_cursors_are_400(hostile, cursor: str) -> None:
    r = hostile.get("/v1/search-jobs", params={"cursor": cursor})
    if r.status_code != 200:  # SQLite compares the key; PostgreSQL cannot hold it
        assert_problem(r, 400, "invalid-cursor")
    job = hostile.post("/v1/search-jobs", json=JOB).json()
    r = hostile.get(f"/v1/search-jobs/{job['id']}/candidates", params={"cursor": cursor})
    assert_problem(r, 400, "invalid-cursor")


def test_a_cursor_from_another_listing_or_order_is_400(hostile, database_url) -> None:
    for i in range(2):
        hostile.post("/v1/search-jobs", json={**JOB, "seed": i})
    jobs_cursor = hostile.get("/v1/search-jobs", params={"limit": 1}).json()["next_cursor"]
    engine = make_engine(database_url)
    try:
        claimed = queue.claim_next_job(engine, "test-worker", 30)
        for i in range(3):
            queue.record_candidate(engine, claimed.job_id, claimed.lease_token, i,
                                   status="rejected", reason="test")
    finally:
        engine.dispose()
    path = f"/v1/search-jobs/{claimed.job_id}/candidates"
    by_index = hostile.get(path, params={"order_by": "index", "limit": 1}).json()["next_cursor"]
    assert by_index and jobs_cursor
    assert_problem(hostile.get(path, params={"cursor": jobs_cursor}), 400, "invalid-cursor")
    assert_problem(hostile.get(path, params={"cursor": by_index, "order_by": "score"}), 400,
                   "invalid-cursor")


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 501}, {"limit": "ten"},
                                   {"status": "sleeping"}])
def test_bad_listing_parameters_are_422(hostile, query) -> None:
    assert_problem(hostile.get("/v1/search-jobs", params=query), 422, "invalid-request")


def test_reusing_an_idempotency_key_with_another_body_is_409(hostile) -> None:
    first = hostile.post("/v1/search-jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    body = assert_problem(hostile.post("/v1/search-jobs", json={**JOB, "seed": 2},
                                       headers={"Idempotency-Key": "k-1"}), 409,
                          "idempotency-conflict")
    assert body["job_id"] == first.json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "two words"])
def test_malformed_idempotency_keys_are_422(hostile, key: str) -> None:
    r = hostile.post("/v1/search-jobs", json=JOB,
                     headers={"Idempotency-Key": key.encode("utf-8")})  # type: ignore[dict-item]
    assert_problem(r, 422, "invalid-request")


def test_the_catch_all_answers_a_problem_and_counts_it(make_client) -> None:
    from fastapi.testclient import TestClient

    client = make_client()
    app = client.app

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as quiet:
        body = assert_problem(quiet.get("/boom"), 500, "internal-error")
        assert "a bug" not in json.dumps(body)
        assert "nas_http_unhandled_exceptions_total 1" in quiet.get("/metrics").text


def test_nul_characters_never_reach_the_database(hostile) -> None:
    """PostgreSQL refuses NUL in text: names and cursors carrying one must not become 500s."""
    import base64

    doc = tiny_graph_doc(9)
    doc["name"] = "evil\u0000name"
    r = hostile.post("/v1/architectures", json={"graph": doc})
    assert r.status_code in (200, 201, 422), r.text
    key = json.dumps({"l": "jobs", "k": ["2020-01-01T00:00:00+00:00", "a\u0000b"]})
    cursor = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    r = hostile.get("/v1/search-jobs", params={"cursor": cursor})
    if r.status_code != 200:  # SQLite compares the key; PostgreSQL cannot hold it
        assert_problem(r, 400, "invalid-cursor")


# ---- found by tests/test_api_schemathesis.py ---------------------------------------------------


def test_a_wrong_key_beside_a_right_one_is_401(make_client) -> None:
    """Schemathesis' ignored_auth: a valid X-API-Key let an invalid bearer token through."""
    client = make_client(api_keys=("right-key",))
    assert client.get("/v1/tasks", headers={"X-API-Key": "right-key"}).status_code == 200
    for headers in ({"X-API-Key": "right-key", "Authorization": "Bearer wrong-key"},
                    {"X-API-Key": "wrong-key", "Authorization": "Bearer right-key"}):
        body = assert_problem(client.get("/v1/tasks", headers=headers), 401, "unauthorized")
        assert body["detail"] == "the API key is not valid"


def _operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def test_every_documented_error_is_a_problem(hostile) -> None:
    """Schemathesis' content_type_conformance: FastAPI documented the checkpoints' 422 (an
    If-None-Match over 4096 characters) as application/json HTTPValidationError, and the API
    answered application/problem+json."""
    document = hostile.get("/openapi.json").json()
    problem_content = {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}
    assert {"Problem", "FieldError"} <= set(document["components"]["schemas"])
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if status[0] in "45":
                assert response["content"] == problem_content, (method, path, status)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in operation["responses"], (method, path)
        if operation.get("requestBody"):
            assert {"400", "413"} <= set(operation["responses"]), (method, path)

    too_long = hostile.get("/v1/architectures/" + "a" * 32 + "/checkpoint",
                           headers={"If-None-Match": "x" * 5000})
    body = assert_problem(too_long, 422, "invalid-request")
    assert body["errors"][0]["location"] == "/header/if-none-match"


def test_the_document_asks_for_keys_only_when_the_service_does(make_client) -> None:
    """Schemathesis' ignored_auth: the document declared API-key security on a service without
    keys, so every open answer looked like ignored authentication."""
    open_document = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in open_document["components"]
    assert all("security" not in op and "401" not in op["responses"]
               for _, _, op in _operations(open_document))

    secured = make_client(api_keys=("k",)).get("/openapi.json").json()
    assert set(secured["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    for method, path, operation in _operations(secured):
        is_v1 = path.startswith("/v1/")
        assert bool(operation.get("security")) == is_v1, (method, path)
        assert ("401" in operation["responses"]) == is_v1, (method, path)


def test_the_document_states_the_names_and_limits_the_service_accepts(make_client) -> None:
    """Schemathesis' positive_data_acceptance: the document allowed any string as a space or a
    task, a body with neither a graph nor a space, and any budget; the service refused them."""
    from nas_service.spaces import SPACES

    client = make_client(max_search_candidates=7)
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    architecture = schemas["ArchitectureRequest"]
    space = next(s for s in architecture["properties"]["space"]["anyOf"] if "enum" in s)
    assert space["enum"] == sorted(SPACES)
    # The tasks the loaded GHN scores, not every known one ("mnist" is a 422 here).
    assert architecture["properties"]["task"]["enum"] == ["fashion-mnist"]
    assert schemas["SearchJobRequest"]["properties"]["task"]["enum"] == ["fashion-mnist"]
    assert_problem(client.post("/v1/architectures", json={"space": "cells", "seed": 1,
                                                          "task": "mnist"}),
                   422, "task-not-supported")
    assert [branch["required"] for branch in architecture["anyOf"]] == [["graph"],
                                                                        ["space", "seed"]]
    assert schemas["SearchJobRequest"]["properties"]["space"]["enum"] == sorted(SPACES)
    budget = schemas["SearchJobRequest"]["properties"]["budget"]
    assert budget["properties"]["candidates"]["maximum"] == 7
    body = {**JOB, "budget": {"candidates": 8}}
    assert_problem(client.post("/v1/search-jobs", json=body), 422, "invalid-request")
    assert client.post("/v1/search-jobs", json={**JOB, "budget": {"candidates": 7}}
                       ).status_code == 202
    for neither in ({}, {"space": "cells"}, {"graph": tiny_graph_doc(), "space": "cells",
                                             "seed": 1}):
        assert_problem(client.post("/v1/architectures", json=neither), 422, "invalid-request")


def test_every_link_in_the_document_leads_to_an_operation(hostile) -> None:
    """Links carry Schemathesis' stateful run (and clients) from a created resource to the
    operations on it; one naming a missing operation id would be silently skipped."""
    document = hostile.get("/openapi.json").json()
    operations = {op["operationId"]: (path, op) for _, path, op in _operations(document)}
    assert len(operations) == len(_operations(document))  # operation ids are unique
    linked = 0
    for _, _, operation in _operations(document):
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                path, target = operations[link["operationId"]]
                declared = {p["name"] for p in target.get("parameters", ())}
                assert set(link["parameters"]) <= declared, link
                assert all(f"{{{name}}}" in path for name in link["parameters"]), link
                linked += 1
    assert linked >= 10
    assert "Location" in document["paths"]["/v1/architectures"]["post"]["responses"]["201"][
        "headers"]


# ---- strict input: one test per class of ambiguous or unstorable input -------------------------


@pytest.mark.parametrize("content", [
    json.dumps({"graph": tiny_graph_doc()}).encode("utf-16"),
    json.dumps({"graph": tiny_graph_doc()}).encode("utf-16-le"),
    json.dumps({"graph": tiny_graph_doc()}).encode("utf-32"),
    b"\xef\xbb\xbf" + json.dumps({"graph": tiny_graph_doc()}).encode(),
    b'{"space": "cells", "seed": 1, "task": "fashion-mnist\xe9"}',
])
def test_a_body_that_is_not_utf8_is_400(hostile, content: bytes) -> None:
    for path in ("/v1/architectures", "/v1/search-jobs"):
        assert_problem(_post_raw(hostile, path, content), 400, "malformed-json")


@pytest.mark.parametrize("content", [
    b'{"space": "cells", "seed": 1, "seed": 2}',
    b'{"graph": {"format": "nas-graph/1", "nodes": [{"id": "a", "op": "input", "shape": [1, 28,'
    b' 28], "shape": [3, 32, 32]}]}}',
    b'{"graph": {"format": "nas-graph/1", "format": "nas-graph/1", "nodes": []}}',
])
def test_duplicate_keys_are_400_at_any_depth(hostile, content: bytes) -> None:
    body = assert_problem(_post_raw(hostile, "/v1/architectures", content), 400, "malformed-json")
    assert "twice" in body["detail"]


def test_a_duplicate_attribute_never_picks_a_winner(hostile) -> None:
    """The probe's case: ``out_channels`` twice in one node, the last one used silently."""
    text = json.dumps({"graph": tiny_graph_doc(4)})
    text = text.replace('"out_channels": 4', '"out_channels": 4, "out_channels": 8')
    assert text.count("out_channels") == 2
    assert_problem(_post_raw(hostile, "/v1/architectures", text.encode()), 400, "malformed-json")


@pytest.mark.parametrize("where", ["name", "node-id", "task", "space", "key", "constraints"])
def test_lone_surrogate_escapes_are_refused_before_anything_is_stored(hostile, where) -> None:
    """A string JSON can carry but UTF-8 cannot encode must never reach a row."""
    doc = tiny_graph_doc(5)
    if where == "name":
        text = json.dumps({"graph": {**doc, "name": "PLACEHOLDER"}})
    elif where == "node-id":
        doc["nodes"][1]["id"] = "PLACEHOLDER"
        text = json.dumps({"graph": doc})
    elif where == "key":
        text = json.dumps({"graph": doc, "PLACEHOLDER": 1})
    elif where == "constraints":
        text = json.dumps({**JOB, "constraints": {"PLACEHOLDER": 1}})
    else:
        text = json.dumps({**JOB, where: "PLACEHOLDER"})
    content = text.replace("PLACEHOLDER", "bad\\ud800name").encode()
    path = "/v1/architectures" if '"graph"' in text else "/v1/search-jobs"
    assert_problem(_post_raw(hostile, path, content), 400, "malformed-json")
    # A surrogate pair is a character like any other.
    content = text.replace("PLACEHOLDER", "ok\\ud83d\\ude00").encode()
    assert _post_raw(hostile, path, content).status_code < 500


def test_a_stored_row_with_unencodable_text_is_still_readable(hostile, database_url) -> None:
    """Rows written before the storage layer refused such text: reading them, and posting the
    same structure under another name (a cache hit on that row), answer 200."""
    doc = tiny_graph_doc(6)
    created = hostile.post("/v1/architectures", json={"graph": doc})
    assert created.status_code == 201, created.text
    architecture_id = created.json()["id"]
    poisoned = json.dumps({**doc, "name": "PLACEHOLDER"}).replace("PLACEHOLDER", "bad\\ud800")
    engine = make_engine(database_url)
    try:
        # The driver itself, below the storage layer's checks, as an older version wrote it.
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        raw = engine.raw_connection()
        try:
            raw.cursor().execute(f"UPDATE architectures SET graph = {mark} WHERE id = {mark}",
                                 (poisoned, architecture_id))
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()
    read = hostile.get(f"/v1/architectures/{architecture_id}")
    assert read.status_code == 200, read.text
    assert read.json()["graph"]["name"] == "bad\ufffd"
    again = hostile.post("/v1/architectures", json={"graph": {**doc, "name": "another"}})
    assert again.status_code == 200 and again.json()["id"] == architecture_id


@pytest.mark.parametrize("key", [
    {"l": "candidates:score", "k": [10**400, 1]},
    {"l": "candidates:score", "k": [-(10**309), 1]},
    {"l": "candidates:score", "k": [0.5, 10**30]},
    {"l": "candidates:score", "k": [0.5, -1]},
    {"l": "candidates:index", "k": [2**31]},
    {"l": "candidates:index", "k": [2**63 - 1]},
    {"l": "candidates:index", "k": [2**64]},
    {"l": "jobs", "k": ["9999-12-31T23:59:59-14:00", "a" * 32]},
    {"l": "jobs", "k": ["0001-01-01T00:00:00+14:00", "a" * 32]},
    {"l": "jobs", "k": ["2020-01-01T00:00:00+00:00", "\ud800"]},
    {"l": "jobs", "k": ["2020-01-01T00:00:00+00:00", "x" * 100]},
    {"l": "jobs", "k": ["2020-01-01T00:00:00+99:00", "a" * 32]},
])
def test_numeric_and_text_overflow_in_a_tampered_cursor_is_400(hostile, key) -> None:
    import base64

    raw = json.dumps(key).encode()  # ensure_ascii: a lone surrogate travels as an escape
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    job = hostile.post("/v1/search-jobs", json=JOB).json()
    path = (f"/v1/search-jobs/{job['id']}/candidates" if key["l"].startswith("candidates")
            else "/v1/search-jobs")
    order = key["l"].split(":")[1] if ":" in key["l"] else None
    r = hostile.get(path, params={"cursor": cursor, **({"order_by": order} if order else {})})
    assert_problem(r, 400, "invalid-cursor")


@pytest.mark.parametrize("headers", [
    [("Authorization", "Bearer right-key"), ("X-API-Key", "")],
    [("Authorization", "Bearer right-key"), ("X-API-Key", " ")],
    [("Authorization", "Bearer "), ("X-API-Key", "right-key")],
    [("Authorization", "Basic cmlnaHQta2V5Og=="), ("X-API-Key", "right-key")],
    [("Authorization", "right-key"), ("X-API-Key", "right-key")],
    [("X-API-Key", "right-key"), ("X-API-Key", "right-key")],
    [("Authorization", "Bearer right-key"), ("Authorization", "Bearer right-key")],
    [("X-API-Key", "")],
])
def test_ambiguous_credentials_are_401_even_beside_a_valid_key(make_client, headers) -> None:
    client = make_client(api_keys=("right-key",))
    assert client.get("/v1/tasks", headers={"Authorization": "Bearer right-key"}
                      ).status_code == 200
    r = client.get("/v1/tasks", headers=httpx.Headers(headers))
    assert_problem(r, 401, "unauthorized")


def test_a_checkpoint_altered_on_disk_is_never_served_under_its_old_etag(hostile) -> None:
    created = hostile.post("/v1/architectures", json={"graph": tiny_graph_doc(7)}).json()
    url = f"/v1/architectures/{created['id']}/checkpoint"
    good = hostile.get(url)
    assert good.status_code == 200
    store = hostile.app.state.service.store
    path = store.root / f"{created['checkpoint']['id'][:2]}/{created['checkpoint']['id']}" \
                        ".safetensors"
    original = path.read_bytes()
    for damaged in (original[:-10], original[:-1] + bytes([original[-1] ^ 1]), b""):
        path.write_bytes(damaged)
        assert_problem(hostile.get(url), 404, "checkpoint-damaged")
        conditional = hostile.get(url, headers={"If-None-Match": good.headers["etag"]})
        assert conditional.status_code == 304  # the client holds the right bytes
    path.write_bytes(original)
    restored = hostile.get(url)
    assert restored.status_code == 200 and restored.content == original


# ---- requests nobody wrote down ----------------------------------------------------------------

_ANY_CHARACTER = st.characters(codec=None, categories=None)  # lone surrogates and NUL included
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(_ANY_CHARACTER, max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["graph", "space", "seed", "task", "nodes", "format", "id",
                                       "op", "name", "budget", "candidates", "constraints"])
                      | st.text(_ANY_CHARACTER, max_size=6), inner, max_size=4),
    max_leaves=12)


@given(body=_JSON | st.binary(max_size=64),
       path=st.sampled_from(["/v1/architectures", "/v1/search-jobs"]))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_body_whatever_it_holds_gets_a_5xx(hostile, body, path: str) -> None:
    # ensure_ascii: lone surrogates travel as escapes, as a client's JSON library writes them.
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    r = _post_raw(hostile, path, content)
    assert r.status_code < 500, (r.status_code, r.text[:500])
