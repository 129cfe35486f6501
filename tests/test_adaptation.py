"""Adapting the GHN to a registered task: the output regulariser keeps earlier tasks'
predictions, and an adaptation that crashed or was stopped resumes exactly where its saved
state left it (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import Engine, update

pytest.register_assert_rewrite("service_support")

from service_support import SMALL_FLOPS, TINY_GHN  # noqa: E402

from nas_service.data import (  # noqa: E402
    UploadLimits,
    clear_cache,
    decode_upload,
    forget_task,
    store_task,
)
from nas_service.data.uploads import task_spec_for  # noqa: E402
from nas_service.db import (  # noqa: E402
    JobStatus,
    RegisteredTask,
    db_now,
    read_session,
    tasks,
    write_session,
)
from nas_service.ghn import GraphHyperNetwork  # noqa: E402
from nas_service.ghn.adaptation import AdaptationConfig, TaskAdapter  # noqa: E402
from nas_service.ghn.checkpoint import save_ghn  # noqa: E402
from nas_service.ghn.tasks import load_served  # noqa: E402
from nas_service.scoring.scorer import AdaptedSource, file_sha256  # noqa: E402
from nas_service.search import AdaptationRunner, AdaptationSettings  # noqa: E402
from nas_service.search.adaptation import STATE_FILE, probe_architectures  # noqa: E402

pytest_plugins = ("service_support",)

SETTINGS = AdaptationSettings(steps=3, probe_architectures=2, batch_graphs=1, batch_images=16,
                              checkpoint_every=1, max_flops=SMALL_FLOPS // 4)


def tiny_ghn(path: Path) -> Path:
    torch.manual_seed(0)
    return save_ghn(GraphHyperNetwork(TINY_GHN), path, task="fashion-mnist")


def upload_task(folder: Path, name: str) -> Any:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.integers(0, 100, (60, 12, 12)) + 50 * y[:, None, None]).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    upload = decode_upload([("d.npz", buf.getvalue())], UploadLimits(min_per_class=5))
    spec = task_spec_for(name, upload, folder / name)
    store_task(spec, upload)
    return spec


@pytest.fixture
def registered(engine: Engine, tmp_path: Path) -> Any:
    name = f"adapt-{uuid.uuid4().hex[:6]}"
    spec = upload_task(tmp_path / "tasks", name)
    with write_session(engine) as session:
        tasks.create_task(session, name=name, format="npz", input_shape=spec.input_shape,
                          num_classes=3, class_names=spec.class_names, train_images=50,
                          test_images=10, size_bytes=1, path=spec.default_root,
                          settings=SETTINGS.record(), progress_total=SETTINGS.steps)
    yield name
    forget_task(name)
    clear_cache()


def runner(engine: Engine, tmp_path: Path, folder: str, **kwargs: Any) -> AdaptationRunner:
    base = tmp_path / "base.safetensors"
    if not base.exists():
        tiny_ghn(base)
    source = AdaptedSource(tmp_path / folder, tmp_path / "tasks", file_sha256(base))
    return AdaptationRunner(engine, source, base, lease_seconds=30, heartbeat_seconds=0.01,
                            **kwargs)


def served_state(folder: Path, task: str) -> dict[str, torch.Tensor]:
    loaded = load_served(folder, "cpu")
    assert loaded is not None
    ghn, _ = loaded
    return {**ghn.state_dict(), "embedding": ghn.task_embeddings[task]}


def _row(engine: Engine, name: str) -> RegisteredTask:
    with read_session(engine) as session:
        row = tasks.get_task(session, name)
        assert row is not None
        return row


def test_a_crashed_adaptation_resumes_to_the_same_ghn(engine: Engine, tmp_path: Path,
                                                      registered: str) -> None:
    steps: list[int] = []

    def crash_at_2(task: str, step: int, metrics: dict[str, float]) -> None:
        steps.append(step)
        if step == 2 and len(steps) == 2:
            raise RuntimeError("the power went out")

    first = runner(engine, tmp_path, "resumed", on_step=crash_at_2)
    assert first.run_once() == "abandoned"
    assert (tmp_path / "tasks" / registered / STATE_FILE).is_file()
    assert _row(engine, registered).progress_done < 3
    with engine.begin() as conn:  # the crashed worker's lease runs out
        conn.execute(update(RegisteredTask).values(lease_expires_at=db_now(-1)))
    assert first.run_once() == "succeeded"
    # The crash came before step 2's state was saved: the run resumed from step 1's state and
    # redid step 2 only.
    assert steps == [1, 2, 2, 3]
    row = _row(engine, registered)
    assert (row.status, row.progress_done, row.attempts) == (JobStatus.SUCCEEDED, 3, 2)
    assert not (tmp_path / "tasks" / registered / STATE_FILE).exists()

    # The same adaptation without the crash serves exactly the same GHN and embedding.
    with engine.begin() as conn:
        conn.execute(update(RegisteredTask).values(status=JobStatus.QUEUED, attempts=0,
                                                   progress_done=0))
    assert runner(engine, tmp_path, "uninterrupted").run_once() == "succeeded"
    resumed = served_state(tmp_path / "resumed", registered)
    straight = served_state(tmp_path / "uninterrupted", registered)
    assert resumed.keys() == straight.keys()
    for key in resumed:
        assert torch.allclose(resumed[key], straight[key], atol=1e-6), key


def test_a_stopped_adaptation_is_released_with_its_state(engine: Engine, tmp_path: Path,
                                                         registered: str) -> None:
    stop = threading.Event()

    def stop_at_1(task: str, step: int, metrics: dict[str, float]) -> None:
        stop.set()

    assert runner(engine, tmp_path, "served", on_step=stop_at_1).run_once(stop) == "released"
    row = _row(engine, registered)
    assert (row.status, row.attempts) == (JobStatus.QUEUED, 0)
    seen: list[int] = []
    again = runner(engine, tmp_path, "served", on_step=lambda t, s, m: seen.append(s))
    assert again.run_once() == "succeeded" and seen == [2, 3]
    assert runner(engine, tmp_path, "served").run_once() is None  # nothing left


def test_the_output_regularizer_keeps_earlier_predictions() -> None:
    def drift(beta: float) -> float:
        torch.manual_seed(0)
        ghn = GraphHyperNetwork(TINY_GHN).eval()
        ghn.task = "fashion-mnist"
        probes = {None: probe_architectures(("cells",), (1, 12, 12), 10, 2,
                                            max_flops=SMALL_FLOPS // 4)}
        adapter = TaskAdapter(ghn, "new", probes, AdaptationConfig(steps=5, beta=beta, lr=1e-2))
        graphs = probe_architectures(("cells",), (1, 12, 12), 3, 2, max_flops=SMALL_FLOPS // 4)
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randn(16, 1, 12, 12, generator=gen)
            y = torch.randint(0, 3, (16,), generator=gen)
            adapter.train_step(graphs, x, y)
        return adapter.drift()[""]

    free, regularized = drift(0.0), drift(1.0)
    assert free > 0.01
    assert regularized < 0.5 * free


def test_an_embedding_only_adaptation_leaves_earlier_tasks_exactly_as_they_were() -> None:
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY_GHN).eval()
    ghn.task = "fashion-mnist"
    earlier = probe_architectures(("cells",), (1, 12, 12), 10, 2, max_flops=SMALL_FLOPS // 4)
    ghn.add_task("older")
    with torch.no_grad():  # as the scorer predicts
        before = {t: ghn.predict(earlier, task=t) for t in (None, "older")}
    weights = {k: v.clone() for k, v in ghn.state_dict().items()}
    adapter = TaskAdapter(ghn, "new", {None: earlier, "older": earlier},
                          AdaptationConfig(steps=5, lr=0.0))
    graphs = probe_architectures(("cells",), (1, 12, 12), 3, 2, max_flops=SMALL_FLOPS // 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 1, 12, 12, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        metrics = adapter.train_step(graphs, x, y)
    assert metrics["regularizer"] == 0.0
    assert adapter.embedding.abs().sum() > 0  # the new task's embedding was learnt
    assert all(torch.equal(v, weights[k]) for k, v in ghn.state_dict().items())
    for task, predicted in before.items():
        with torch.no_grad():
            after = ghn.predict(earlier, task=task)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(after, predicted, strict=True)
                   for k in a)
