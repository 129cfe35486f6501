"""Admission control: what scoring a graph costs is estimated from its shapes before it runs
(``nas_service.graph.footprint``, ``nas_service.scoring.cost``); a graph over the budget is a
422 problem naming the limit and the estimate, a candidate a worker cannot afford is rejected
with that reason, and a memory failure that happens anyway is neither a 500 nor a crash.

The resource bombs are small valid graphs inside every count the graph layer limits
(parameters, MACs, per-sample activations) whose cost is in what scoring multiplies them by."""

from __future__ import annotations

import math
import threading
import time

import pytest

pytest.register_assert_rewrite("service_support")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from service_support import assert_problem, requires_fashion_mnist, tiny_graph  # noqa: E402

from nas_service.db import listings, queue, read_session, write_session  # noqa: E402
from nas_service.graph import ArchitectureGraph, GraphBuilder  # noqa: E402
from nas_service.graph.footprint import footprint  # noqa: E402
from nas_service.scoring import ScoringBudget, ScoringTooCostly, is_memory_failure  # noqa: E402
from nas_service.scoring.cost import (  # noqa: E402
    PARAMETER_COPIES,
    SCORING_OVERHEAD_BYTES,
    check_affordable,
    scoring_cost,
)
from nas_service.search import CheckpointStore, Worker  # noqa: E402

pytest_plugins = ("service_support",)

INPUT = {"id": "input", "op": "input", "shape": [1, 28, 28]}
MIB = 2**20


def _head(source: str, nodes: list[dict]) -> dict:
    return {"format": "nas-graph/1", "nodes": [INPUT, *nodes,
            {"id": "gap", "op": "global_avg_pool", "inputs": [source]},
            {"id": "fc", "op": "linear", "inputs": ["gap"], "out_features": 10},
            {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]}


def _conv(node_id: str, source: str, channels: int, padding: int = 1) -> dict:
    return {"id": node_id, "op": "conv2d", "inputs": [source], "out_channels": channels,
            "kernel_size": [3, 3], "padding": [padding, padding]}


# Each class of bomb the old limits did not look at; all of them pass graph validation.
BOMBS = {
    "padding": _head("c", [_conv("c", "input", 8, padding=1000)]),
    "upsampling": _head("c", [{"id": "up", "op": "adaptive_avg_pool", "inputs": ["input"],
                               "output_size": [4096, 4096]}, _conv("c", "up", 1)]),
    "attention-tokens": _head("att", [
        {"id": "up", "op": "adaptive_avg_pool", "inputs": ["input"], "output_size": [64, 64]},
        _conv("c", "up", 8), {"id": "att", "op": "self_attention", "inputs": ["c"],
                              "num_heads": 2}]),
    "dense-parameters": {"format": "nas-graph/1", "nodes": [
        INPUT, {"id": "flat", "op": "flatten", "inputs": ["input"]},
        {"id": "fc1", "op": "linear", "inputs": ["flat"], "out_features": 16384},
        {"id": "fc2", "op": "linear", "inputs": ["fc1"], "out_features": 2048},
        {"id": "fc", "op": "linear", "inputs": ["fc2"], "out_features": 10},
        {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10}]},
}


def _deep_wide() -> dict:
    """Under the service's 20 G MACs per sample, but scored on every image: a compute bomb."""
    nodes, source = [], "input"
    for i in range(36):
        nodes.append(_conv(f"c{i}", source, 256))
        source = f"c{i}"
    return _head(source, nodes)


# ---- the estimate, from shapes alone ------------------------------------------------------------


def test_the_footprint_of_a_chain_is_two_live_tensors_plus_workspace() -> None:
    graph = tiny_graph(4)  # conv(4, 14x14) -> bn -> relu -> pool -> linear
    fp = footprint(graph)
    conv = 4 * 14 * 14
    # While the conv runs: its input (784), its output and oneDNN's reorder of it.
    assert fp.peak_elements == 784 + 2 * conv
    assert fp.largest_elements == conv
    assert fp.peak_node == "conv"


def test_a_gradient_pass_is_counted_where_the_ranking_head_needs_one() -> None:
    graph = tiny_graph(4)
    fp = footprint(graph)
    # Every output, and the conv's and the linear layer's reorder workspaces (one output each),
    # may be kept for the backward pass.
    outputs = sum(math.prod(n.shape) for n in graph.nodes)
    assert fp.saved_elements == outputs + 4 * 14 * 14 + 10
    plain = scoring_cost(graph, eval_images=1000, eval_batch_size=100,
                         recalibration_batches=4, recalibration_batch_size=128)
    with_gradient = scoring_cost(graph, eval_images=1000, eval_batch_size=100,
                                 recalibration_batches=4, recalibration_batch_size=128,
                                 grad_norm_images=128)
    assert with_gradient.macs == plain.macs + 3 * 128 * graph.flops
    fixed = SCORING_OVERHEAD_BYTES + PARAMETER_COPIES * 4 * graph.num_parameters
    assert with_gradient.peak_bytes == max(
        plain.peak_bytes, fixed + 4 * (fp.saved_elements + fp.peak_elements) * 128)
    assert with_gradient.grad_norm_batch_size == 128 and plain.grad_norm_batch_size == 0
    # Where the whole batch's backward pass does not fit, the gradient is accumulated over
    # smaller batches that do; where not even one image fits, the graph is refused.
    backward = 4 * (fp.saved_elements + fp.peak_elements)
    assert with_gradient.peak_bytes > plain.peak_bytes  # the backward pass is the peak here
    budget = ScoringBudget(max_bytes=plain.peak_bytes)
    cut = scoring_cost(graph, eval_images=1000, eval_batch_size=100, recalibration_batches=4,
                       recalibration_batch_size=128, grad_norm_images=128, budget=budget)
    assert cut.grad_norm_batch_size == (plain.peak_bytes - fixed) // backward // 2 * 2
    assert 1 <= cut.grad_norm_batch_size < 128 and cut.macs == with_gradient.macs
    check_affordable(cut, budget)
    tiny = ScoringBudget(max_bytes=fixed + backward // 2)
    with pytest.raises(ScoringTooCostly):
        check_affordable(scoring_cost(graph, eval_images=1000, eval_batch_size=1,
                                      recalibration_batches=0, recalibration_batch_size=0,
                                      grad_norm_images=128, budget=tiny), tiny)


def test_a_skip_connection_keeps_its_source_alive() -> None:
    b = GraphBuilder((4, 8, 8))
    a = b.add("relu", b.input, id="a")
    x = b.add("relu", a, id="b")
    x = b.add("relu", x, id="c")
    x = b.add("add", x, a, id="sum")
    graph = b.build(b.add("linear", b.add("global_avg_pool", x, id="gap"), id="fc",
                          out_features=2), num_classes=2)
    fp = footprint(graph)
    # At "c": a (kept for the add) + b (c's input) + c; without the skip it would be 2 x 256.
    assert fp.peak_elements == 3 * 256


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_every_bomb_is_valid_and_over_the_default_budget(name: str) -> None:
    graph = ArchitectureGraph.from_dict(BOMBS[name])  # inside every graph-layer limit
    cost = scoring_cost(graph, eval_images=1000, eval_batch_size=100, recalibration_batches=4,
                        recalibration_batch_size=128)
    with pytest.raises(ScoringTooCostly) as caught:
        check_affordable(cost, ScoringBudget())
    assert caught.value.resource == "memory"
    assert caught.value.estimate == cost.peak_bytes > caught.value.limit
    assert "MiB" in str(caught.value)


def test_a_graph_at_the_mac_limit_is_over_the_compute_budget() -> None:
    graph = ArchitectureGraph.from_dict(_deep_wide())
    assert graph.flops < 20_000_000_000  # the service's per-sample limit
    cost = scoring_cost(graph, eval_images=1000, eval_batch_size=100, recalibration_batches=4,
                        recalibration_batch_size=128)
    with pytest.raises(ScoringTooCostly) as caught:
        check_affordable(cost, ScoringBudget(max_bytes=2**40))
    assert caught.value.resource == "compute" and "multiply-accumulates" in str(caught.value)


def test_the_evaluation_runs_in_smaller_batches_when_only_they_fit() -> None:
    graph = tiny_graph(16)
    per_sample = 4 * footprint(graph).peak_elements
    fixed = SCORING_OVERHEAD_BYTES + PARAMETER_COPIES * 4 * graph.num_parameters
    budget = ScoringBudget(max_bytes=fixed + per_sample * 200)
    cost = scoring_cost(graph, eval_images=5000, eval_batch_size=1000, recalibration_batches=4,
                        recalibration_batch_size=128, budget=budget)
    assert cost.eval_batch_size == 200
    check_affordable(cost, budget)  # the recalibration batch of 128 fits: admitted


@given(channels=st.integers(1, 64), padding=st.integers(0, 400), size=st.integers(1, 512),
       heads=st.sampled_from([1, 2, 4]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_estimate_grows_with_every_size_a_graph_names(channels, padding, size,
                                                          heads) -> None:
    """Random sizes of the three shape-multiplying ops: the estimate is at least every single
    tensor at the recalibration batch, so no allocation the network makes is larger than what
    admission saw."""
    doc = _head("att", [
        {"id": "up", "op": "adaptive_avg_pool", "inputs": ["input"], "output_size": [size, 1]},
        _conv("c", "up", channels * heads, padding=padding),
        {"id": "att", "op": "self_attention", "inputs": ["c"], "num_heads": heads}])
    try:
        graph = ArchitectureGraph.from_dict(doc)
    except ValueError:
        return  # over a graph-layer limit: refused before admission
    cost = scoring_cost(graph, eval_images=100, eval_batch_size=100, recalibration_batches=1,
                        recalibration_batch_size=32)
    conv = graph["c"]
    tokens = conv.shape[1] * conv.shape[2]
    assert cost.largest_tensor_bytes >= 4 * 32 * max(heads * tokens * tokens,
                                                     channels * heads * tokens)
    assert cost.peak_bytes >= cost.largest_tensor_bytes


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)",
    "CUDA out of memory. Tried to allocate 20.00 GiB",
])
def test_torch_allocation_failures_are_recognised(message: str) -> None:
    assert is_memory_failure(RuntimeError(message))
    assert is_memory_failure(MemoryError())
    assert not is_memory_failure(RuntimeError("size mismatch"))


# ---- the scorer, the API and the worker ----------------------------------------------------------


@requires_fashion_mnist
def test_the_scorer_refuses_an_unaffordable_graph_and_scores_the_rest(scorer) -> None:
    bomb = ArchitectureGraph.from_dict(BOMBS["padding"])
    small = tiny_graph(3)
    results = scorer.sibling(ScoringBudget()).score([small, bomb], "fashion-mnist")
    assert not isinstance(results[0], Exception)
    assert isinstance(results[1], ScoringTooCostly)


@requires_fashion_mnist
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_resource_bomb_is_a_422_naming_the_limit_and_the_estimate(make_client, name) -> None:
    client = make_client()
    body = assert_problem(client.post("/v1/architectures", json={"graph": BOMBS[name]}), 422,
                          "scoring-too-costly")
    assert body["resource"] == "memory"
    assert body["estimate"] > body["limit"] == client.app.state.service.settings.max_scoring_bytes
    assert "limit" in body["detail"]
    assert "status=\"500\"" not in client.get("/metrics").text


@requires_fashion_mnist
def test_the_compute_budget_is_a_setting(make_client) -> None:
    client = make_client(max_scoring_macs=1000)
    body = assert_problem(client.post("/v1/architectures", json={"graph": tiny_graph(3).to_dict()}),
                          422, "scoring-too-costly")
    assert body["resource"] == "compute" and body["limit"] == 1000


@requires_fashion_mnist
def test_a_memory_failure_while_scoring_is_a_422_and_the_service_goes_on(make_client,
                                                                        monkeypatch) -> None:
    client = make_client()
    api_scorer = client.app.state.service.scorer

    def out_of_memory(*_args, **_kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "9663676416 bytes")

    monkeypatch.setattr(api_scorer, "_evaluate", out_of_memory)
    body = assert_problem(client.post("/v1/architectures", json={"graph": tiny_graph(3).to_dict()}),
                          422, "scoring-too-costly")
    assert body["resource"] == "memory"
    monkeypatch.undo()
    assert client.post("/v1/architectures", json={"graph": tiny_graph(3).to_dict()}
                       ).status_code == 201


@requires_fashion_mnist
def test_a_worker_rejects_what_it_cannot_afford_with_the_reason(engine, scorer, tmp_path,
                                                                monkeypatch) -> None:
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task="fashion-mnist",
                                  strategy="random", seed=3, budget_candidates=3)
    poor = scorer.sibling(ScoringBudget(max_macs=1000))
    Worker(engine, poor, CheckpointStore(tmp_path), worker_id="poor", lease_seconds=5.0,
           heartbeat_seconds=0.2, batch_size=3).run(once=True)
    with read_session(engine) as session:
        assert listings.get_job(session, job.id).status.value == "succeeded"
        candidates = listings.list_candidates(session, job.id, order_by="index").items
    assert [c.status.value for c in candidates] == ["rejected"] * 3
    assert all("multiply-accumulates" in c.reason and "limit" in c.reason for c in candidates)

    # An allocation that fails anyway: rejected too, not failed, and the job goes on.
    with write_session(engine) as session:
        job, _ = queue.create_job(session, space="cells", task="fashion-mnist",
                                  strategy="random", seed=4, budget_candidates=2,
                                  constraints={"max_flops": 2_000_000})
    rich = scorer.sibling()
    monkeypatch.setattr(rich, "_evaluate", lambda *a: (_ for _ in ()).throw(
        RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")))
    Worker(engine, rich, CheckpointStore(tmp_path), worker_id="oom", lease_seconds=5.0,
           heartbeat_seconds=0.2, batch_size=2).run(once=True)
    with read_session(engine) as session:
        candidates = listings.list_candidates(session, job.id, order_by="index").items
    rejected = [c for c in candidates if c.reason and "out of memory" in c.reason]
    assert rejected and all(c.status.value == "rejected" for c in rejected)


# ---- separate capacity ---------------------------------------------------------------------------


@requires_fashion_mnist
def test_the_api_scores_while_the_in_process_worker_holds_its_scorer(make_client) -> None:
    """The API and a worker thread have a GHN and a lock each: a search in the same
    process never holds a lock a request waits for."""
    client = make_client(worker_in_process=True)
    service = client.app.state.service
    worker_scorer = service.worker.worker.scorer
    assert worker_scorer is not service.scorer
    assert worker_scorer.lock is not service.scorer.lock
    assert worker_scorer.ghn is not service.scorer.ghn
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with worker_scorer.lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        r = client.post("/v1/architectures", json={"graph": tiny_graph(11).to_dict()})
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 55  # it did not wait for the worker's lock
    finally:
        release.set()
        holder.join()
