"""``nas-service predict | search | jobs | cancel | download`` against a real ``nas-service serve``
process: what they print, their exit statuses, and problem details instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support", "remote_support")

import torch  # noqa: E402
from remote_support import RemoteService, free_port  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from service_support import (  # noqa: E402
    EVAL_IMAGES,
    SMALL_FLOPS,
    requires_fashion_mnist,
    tiny_graph,
    tiny_graph_doc,
)

from nas_service import from_module  # noqa: E402
from nas_service.client import Candidate, Client  # noqa: E402
from nas_service.commands import main  # noqa: E402
from nas_service.commands.remote import (  # noqa: E402
    _best_line,
    _candidate_table,
    load_python_model,
)

pytest_plugins = ("service_support", "remote_support")
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
MISSING_ID = "0" * 32

MODEL_FILE = '''
import torch
from torch import nn

input_shape = (1, 28, 28)
model = nn.Sequential(nn.Conv2d(1, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 10))

if __name__ == "__main__":
    raise SystemExit("training code must not run when nas-service loads this file")
'''

BUILD_FILE = '''
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 7, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 10))
'''


@pytest.fixture
def service(remote_service: RemoteService, monkeypatch: pytest.MonkeyPatch) -> RemoteService:
    """The commands find the service through NAS_URL and NAS_API_KEY."""
    monkeypatch.setenv("NAS_URL", remote_service.url)
    monkeypatch.setenv("NAS_API_KEY", remote_service.api_key)
    return remote_service


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def _graph_file(tmp_path: Path, channels: int = 4, **kwargs) -> Path:
    path = tmp_path / f"graph-{channels}.json"
    path.write_text(json.dumps(tiny_graph_doc(channels, **kwargs)))
    return path


# ---- predict ------------------------------------------------------------------------------------


def test_predict_a_graph_file_prints_a_table_then_json(service, tmp_path, capsys) -> None:
    path = _graph_file(tmp_path, 6)
    status, out, err = _run(capsys, "predict", str(path))
    assert status == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    graph = tiny_graph(6)
    assert fields["name"] == "tiny-6" and fields["cached"] == "no"
    assert fields["parameters"] == f"{graph.num_parameters:,}"
    assert fields["MACs"] == f"{graph.flops:,}"
    assert fields["accuracy"].split()[0].replace(".", "").isdigit()
    assert "predicted-readout" in fields["accuracy"]
    assert "ranking head" in fields["estimated"]
    assert fields["checkpoint"].startswith(f"{service.url}/v1/architectures/{fields['architecture']}")

    status, out, _ = _run(capsys, "predict", str(path), "--json")
    assert status == 0
    body = json.loads(out)
    assert body["cached"] is True and body["id"] == fields["architecture"]
    assert body["content_hash"] == graph.content_hash()
    assert f"{body['score']['value']:.4f}" == fields["accuracy"].split()[0]
    assert {"checkpoint", "timings", "ghn_version", "graph", "created_at"} <= set(body)


def test_predict_space_and_seed(service, capsys) -> None:
    status, out, _ = _run(capsys, "predict", "--space", "macro", "--seed", "4", "--json")
    assert status == 0
    assert json.loads(out)["name"] == "macro/seed=4"
    status, _, err = _run(capsys, "predict", "--space", "macro")
    assert status == 1 and "--space and --seed go together" in err


@pytest.mark.parametrize("source, channels", [(MODEL_FILE, 5), (BUILD_FILE, 7)])
def test_predict_a_python_file(service, tmp_path, capsys, source, channels) -> None:
    path = tmp_path / f"net{channels}.py"
    path.write_text(source)
    module, _ = load_python_model(path)
    expected = from_module(module, (1, 28, 28)).content_hash()
    status, out, err = _run(capsys, "predict", str(path), "--json")
    assert status == 0, err
    body = json.loads(out)
    assert body["content_hash"] == expected
    assert body["num_parameters"] == sum(p.numel() for p in module.parameters())


def test_python_file_convention_errors(service, tmp_path, capsys) -> None:
    cases = {"nothing.py": ("x = 1\n", "defines no `model`"),
             "wrong.py": ("model = 3\n", "`model` is a int"),
             "returns.py": ("def build():\n    return 'net'\n", "build() returned str"),
             "raises.py": ("raise RuntimeError('boom')\n", "running it raised RuntimeError: boom"),
             "shape.py": (MODEL_FILE.replace("(1, 28, 28)", "'big'"), "input_shape must be")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        status, _, err = _run(capsys, "predict", str(path))
        assert status == 1 and message in err, (name, err)


def test_predict_prints_the_problem_of_an_invalid_graph(service, tmp_path, capsys) -> None:
    doc = tiny_graph_doc(4)
    doc["nodes"][1]["kernel_size"] = 0
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(doc))
    status, out, err = _run(capsys, "predict", str(path))
    assert status == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("nas-service: error: 422 Invalid architecture graph: ")
    assert any("/body/graph/nodes/1/kernel_size" in line and "node 'conv'" in line
               for line in lines[1:]), err

    path.write_text(json.dumps(tiny_graph_doc(4, input_shape=(3, 32, 32))))
    status, _, err = _run(capsys, "predict", str(path))
    assert status == 1 and "422 Graph does not fit the task" in err and "/shape" in err

    path.write_text("{not json")
    status, _, err = _run(capsys, "predict", str(path))
    assert status == 1 and f"{path}: not JSON" in err


def test_api_key_and_connection_failures(remote_service, tmp_path, capsys,
                                         monkeypatch) -> None:
    monkeypatch.delenv("NAS_API_KEY", raising=False)
    path = _graph_file(tmp_path)
    status, _, err = _run(capsys, "predict", str(path), "--url", remote_service.url)
    assert status == 1
    assert "401 Unauthorized: a valid API key is required" in err and "--api-key" in err
    status, _, err = _run(capsys, "jobs", "--url", remote_service.url, "--api-key", "bad")
    assert status == 1 and "the API key is not valid" in err

    url = f"http://127.0.0.1:{free_port()}"
    status, _, err = _run(capsys, "jobs", "--url", url, "--retries", "0")
    assert status == 1 and err.startswith(f"nas-service: error: cannot reach {url}")


# ---- search, jobs, cancel, download -------------------------------------------------------------


def test_search_waits_with_progress_and_prints_the_best_candidates(service, capsys) -> None:
    status, out, err = _run(capsys, "search", "--space", "cells", "--budget", "4",
                            "--max-flops", str(SMALL_FLOPS), "--seed", "3", "--wait",
                            "--poll", "0.1", "--top", "3")
    assert status == 0, err
    lines = out.splitlines()
    job_id = lines[0]
    assert len(job_id) == 32
    assert "4/4" in err  # the progress bar
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[1:11])
    assert fields["status"] == "succeeded" and fields["progress"] == "4/4"
    assert fields["fidelity"] == "full budget for every candidate"
    assert fields["ranked by"] == "the GHN's score"
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "index"])
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[0] for r in rows] == ["1", "2", "3"]

    with Client(service.url, service.api_key) as client:
        best = client.candidates(job_id, top=3)
    assert [r[-1] for r in rows] == [c.id for c in best]
    # The service's GHN has a ranking head: the score column says it holds its estimate, and
    # the network's accuracy with its predicted weights stands beside it.
    assert re.split(r"\s{2,}", lines[header])[:5] == ["rank", "index", "status",
                                                       "est. trained acc.", "predicted acc."]
    assert [r[3] for r in rows] == [f"{c.score:.4f}" for c in best]
    assert [r[4] for r in rows] == [f"{c.predicted_accuracy:.4f}" for c in best]
    assert fields["best"].startswith(
        f"{best[0].score:.4f} est. trained accuracy, predicted {best[0].predicted_accuracy:.4f} "
        f"(candidate {best[0].index}")

    status, out, _ = _run(capsys, "jobs")
    assert status == 0 and out.splitlines()[0].split()[:2] == ["job", "status"]
    assert "best est. trained acc.  predicted acc." in out.splitlines()[0]
    row = next(line.split() for line in out.splitlines() if line.startswith(job_id))
    assert row[1:5] == ["succeeded", "cells", "random", "4/4"]
    assert row[5:7] == [f"{best[0].score:.4f}", f"{best[0].predicted_accuracy:.4f}"]

    status, out, _ = _run(capsys, "jobs", "--status", "queued", "--json")
    assert status == 0 and job_id not in {j["id"] for j in json.loads(out)}
    status, out, _ = _run(capsys, "jobs", job_id, "--json", "--top", "2")
    body = json.loads(out)
    assert body["job"]["id"] == job_id and len(body["candidates"]) == 2

    status, out, _ = _run(capsys, "cancel", job_id)
    assert status == 0 and out.strip() == f"job {job_id}: already succeeded, nothing to cancel"


def _candidate(index: int, score: float | None, kind: str | None,
               predicted: float | None) -> Candidate:
    return Candidate(id=f"c{index}", job_id="j", index=index,
                     status="scored" if score is not None else "rejected", score=score,
                     reason=None if score is not None else "over max_flops",
                     num_parameters=1000, flops=2000, seconds=0.1, architecture_id=None,
                     architecture_url=None, checkpoint_url=None,
                     created_at=datetime.now(timezone.utc), predicted_accuracy=predicted,
                     score_kind=kind)


def test_tables_name_the_score_by_what_it_is() -> None:
    # Without a ranking head the score is the predicted accuracy: one column, named so.
    plain = _candidate_table([_candidate(0, 0.71, "predicted-accuracy", 0.71),
                              _candidate(1, None, None, None)]).splitlines()
    assert re.split(r"\s{2,}", plain[0]) == ["rank", "index", "status", "predicted acc.",
                                              "images", "parameters", "MACs", "candidate",
                                              "reason"]
    assert plain[1].split()[3] == "0.7100" and plain[2].split()[3] == "-"
    assert _best_line(_candidate(0, 0.71, "predicted-accuracy", 0.71)).startswith(
        "0.7100 predicted accuracy (candidate 0, c0)")
    # A service that does not say: "score", as before.
    older = _candidate_table([_candidate(0, 0.71, None, None)]).splitlines()
    assert re.split(r"\s{2,}", older[0])[3:5] == ["score", "images"]
    assert _best_line(_candidate(0, 0.71, None, None)) == "0.7100 (candidate 0, c0)"
    # Estimates of two GHNs' heads, or of a head and none: "score", the predicted beside it.
    mixed = _candidate_table([_candidate(0, 0.9, "estimated-trained-accuracy", 0.6),
                              _candidate(1, 0.7, "predicted-accuracy", 0.7)]).splitlines()
    assert re.split(r"\s{2,}", mixed[0])[3:5] == ["score", "predicted acc."]
    assert mixed[1].split()[3:5] == ["0.9000", "0.6000"]
    # Ranked by short training: named so, the predicted accuracy beside it.
    trained = _candidate_table([_candidate(0, 0.5, "short-training-accuracy", 0.7)]).splitlines()
    assert re.split(r"\s{2,}", trained[0])[3:5] == ["short-training acc.", "predicted acc."]
    assert _best_line(_candidate(0, 0.5, "short-training-accuracy", 0.7)).startswith(
        "0.5000 after short training, predicted 0.7000 (candidate 0")


def test_search_with_rungs_and_short_training_shows_what_each_score_is(service,
                                                                      capsys) -> None:
    status, out, err = _run(capsys, "search", "--budget", "4", "--max-flops", str(SMALL_FLOPS),
                            "--seed", "5", "--rungs", f"16,{EVAL_IMAGES}", "--eta", "2",
                            "--short-training", "2",
                            "--wait", "--poll", "0.1", "--no-progress", "--top", "4")
    assert status == 0, err
    lines = out.splitlines()
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[1:11])
    assert fields["fidelity"] == f"16 -> {EVAL_IMAGES} images, best 1/2 of brackets of 4"
    assert fields["ranked by"].startswith(
        "short training, 2 SGD steps from the default initialisation")
    assert " after short training, predicted " in fields["best"]
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "index"])
    # Rung 0's scores are the GHN's, rung 1's the short training's: "score", predicted beside.
    assert re.split(r"\s{2,}", lines[header])[3:6] == ["score", "predicted acc.", "images"]
    images = [re.split(r"\s{2,}", line.strip())[5] for line in lines[header + 1:]]
    assert sorted(images) == sorted([f"{EVAL_IMAGES} full"] * 2 + ["16 rung 0"] * 2)
    status, _, err = _run(capsys, "search", "--budget", "4", "--rungs", "16,x")
    assert status == 2 and "image counts separated by commas" in err


def test_search_without_wait_prints_the_id_and_cancel_stops_it(service, capsys) -> None:
    status, out, err = _run(capsys, "search", "--budget", "5000", "--max-flops",
                            str(SMALL_FLOPS), "--seed", "8")
    assert status == 0
    job_id = out.strip()
    assert len(job_id) == 32 and f"nas-service jobs {job_id}" in err
    status, out, _ = _run(capsys, "cancel", job_id)
    assert status == 0 and out.startswith(f"job {job_id}: ")
    with Client(service.url, service.api_key) as client:
        job = client.wait(job_id, progress=False, poll=0.1, timeout=60)
    assert job.status == "cancelled"
    status, out, _ = _run(capsys, "jobs", job_id)
    assert status == 0 and "status       cancelled" in out

    status, _, err = _run(capsys, "cancel", MISSING_ID)
    assert status == 1 and "404 Search job not found" in err


def test_download_by_candidate_or_architecture_id(service, tmp_path, capsys) -> None:
    with Client(service.url, service.api_key) as client:
        job = client.wait(client.submit_search(space="cells", candidates=2,
                                               max_flops=SMALL_FLOPS, seed=21),
                          progress=False, poll=0.1, timeout=120)
        best = client.candidates(job, top=1)[0]
    assert best.status == "scored"

    out_file = tmp_path / "best.safetensors"
    status, out, err = _run(capsys, "download", best.id, "-o", str(out_file))
    assert status == 0, err
    with Client(service.url, service.api_key) as client:
        reproduced = client.architecture(best.architecture_id).accuracy
    assert out.startswith(f"wrote {out_file}: ") and f"accuracy {reproduced:.4f}" in out
    tensors = load_file(str(out_file))
    with Client(service.url, service.api_key) as client:
        net = client.download_checkpoint(best.architecture_id, kind="architecture")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in tensors.items())

    status, out, _ = _run(capsys, "download", best.architecture_id, "--architecture", "-o",
                          str(tmp_path / "a.safetensors"))
    assert status == 0
    assert (tmp_path / "a.safetensors").read_bytes() == out_file.read_bytes()

    status, _, err = _run(capsys, "download", best.id, "--architecture", "-o",
                          str(tmp_path / "x.safetensors"))
    assert status == 1 and "404 Architecture not found" in err
    status, _, err = _run(capsys, "download", MISSING_ID)
    assert status == 1 and "no architecture or candidate" in err
    assert not (tmp_path / "x.safetensors").exists() and not Path(f"{MISSING_ID}.safetensors").exists()


def test_python_m_nas_service_predict_in_a_subprocess(remote_service, tmp_path) -> None:
    path = _graph_file(tmp_path, 9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS_")}
    env.update(NAS_URL=remote_service.url, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "nas_service", "predict", str(path), "--json",
         "--api-key", remote_service.api_key],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["content_hash"] == tiny_graph(9).content_hash() and body["cached"] is False

    missing = subprocess.run(
        [sys.executable, "-m", "nas_service", "predict", str(tmp_path / "none.json")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr
