"""The ``nas-service`` command line: exit statuses, messages, and no tracebacks for user mistakes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas_service import GraphBuilder, __version__
from nas_service.commands import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def _small_graph_json() -> str:
    b = GraphBuilder((1, 28, 28), name="small")
    x = b.add("conv2d", b.input, id="conv", out_channels=4, kernel_size=3, padding=1)
    x = b.add("relu", x)
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, id="fc", out_features=10), num_classes=10).to_json()


def _invalid_doc() -> dict:
    return {
        "format": "nas-graph/1",
        "nodes": [
            {"id": "input", "op": "input", "shape": [1, 28, 28]},
            {"id": "conv", "op": "conv2d", "inputs": ["input"], "out_channels": 4,
             "kernel_size": 0},
            {"id": "pool", "op": "global_avg_pool", "inputs": ["conv"]},
            {"id": "fc", "op": "linear", "inputs": ["pool"], "out_features": 10},
            {"id": "output", "op": "output", "inputs": ["fc"], "num_classes": 10},
        ],
    }


@pytest.fixture
def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "valid.json"
    path.write_text(_small_graph_json())
    return path


@pytest.fixture
def invalid_file(tmp_path: Path) -> Path:
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(_invalid_doc()))
    return path


@pytest.fixture
def spaces_available() -> None:
    try:
        from nas_service.spaces import get_space  # noqa: F401
    except ImportError:
        pytest.skip("nas_service.spaces.get_space is not available yet")


def _assert_one_clean_line(text: str) -> None:
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text


# ---- top level ---------------------------------------------------------------------------------


def test_help_lists_every_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert len(COMMANDS) >= 2
    for name in ("info", "graph"):
        assert name in out


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["graph"], ["bogus"], ["graph", "validate"],
                                  ["graph", "sample", "--space", "cells", "--seed", "x"],
                                  ["graph", "sample", "--space", "cells", "--seed", "1",
                                   "--input-shape", "1,two,3"],
                                  ["graph", "sample", "--space", "cells", "--seed", "1",
                                   "--num-classes", "0"]])
def test_bad_arguments_exit_2_without_traceback(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---- info --------------------------------------------------------------------------------------


def test_info_reports_versions_device_and_vocabulary(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from nas_service.graph import OP_NAMES

    monkeypatch.delenv("NAS_DEVICE", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"nas-service {__version__}" in out
    assert torch.__version__ in out
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device       {expected} " in out
    assert f"{len(OP_NAMES)} in nas-graph/1" in out


def test_info_device_follows_nas_device(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NAS_DEVICE", "cpu")
    assert main(["info"]) == 0
    assert "device       cpu (from NAS_DEVICE)" in capsys.readouterr().out


def test_info_rejects_a_nonsense_nas_device_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NAS_DEVICE", "not-a-device")
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    _assert_one_clean_line(err)
    assert "NAS_DEVICE" in err


def test_info_lists_tasks_when_the_data_package_is_there(capsys: pytest.CaptureFixture[str]) -> None:
    data = pytest.importorskip("nas_service.data")
    if not hasattr(data, "list_tasks"):
        pytest.skip("nas_service.data has no list_tasks")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in data.list_tasks():
        assert name in out


def test_info_survives_missing_optional_packages(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A None entry in sys.modules makes `import` raise ImportError.
    monkeypatch.setitem(sys.modules, "nas_service.spaces", None)
    monkeypatch.setitem(sys.modules, "nas_service.data", None)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "spaces       not available" in out
    assert "tasks        not available" in out


def test_python_dash_m_runs_info_in_a_fresh_process(tmp_path: Path) -> None:
    env = {**os.environ, "NAS_DEVICE": "cpu"}
    result = subprocess.run([sys.executable, "-m", "nas_service", "info"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"nas-service {__version__}" in result.stdout
    assert "device       cpu" in result.stdout


# ---- graph validate ----------------------------------------------------------------------------


def test_validate_accepts_a_valid_file(valid_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "validate", str(valid_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{valid_file}: valid (")


def test_validate_prints_each_problem_with_file_node_and_field(
        invalid_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "validate", str(invalid_file)]) == 1
    out = capsys.readouterr().out
    assert f"{invalid_file}: node 'conv', field 'kernel_size': " in out
    assert "Traceback" not in out


def test_validate_reports_bad_json_as_a_problem(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": "nas-graph/1", "nodes": [')
    assert main(["graph", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    _assert_one_clean_line(out)
    assert out.startswith(f"{path}: ") and "not valid JSON" in out


def test_validate_reports_a_missing_file_in_one_line_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert main(["graph", "validate", str(missing)]) == 1
    captured = capsys.readouterr()
    _assert_one_clean_line(captured.err)
    assert str(missing) in captured.err and "cannot read" in captured.err
    assert captured.out == ""


def test_validate_checks_every_file_even_after_a_failure(
        valid_file: Path, invalid_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert main(["graph", "validate", str(missing), str(invalid_file), str(valid_file)]) == 1
    captured = capsys.readouterr()
    assert f"{valid_file}: valid" in captured.out
    assert f"{invalid_file}: node 'conv'" in captured.out
    assert "2 of 3 files invalid" in captured.err


def test_validate_reads_stdin_for_dash(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(_small_graph_json()))
    assert main(["graph", "validate", "-"]) == 0
    assert capsys.readouterr().out.startswith("<stdin>: valid")


def test_validate_rejects_a_directory_cleanly(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "validate", str(tmp_path)]) == 1
    _assert_one_clean_line(capsys.readouterr().err)


# ---- graph summary -----------------------------------------------------------------------------


def test_summary_prints_the_node_table(valid_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from nas_service import ArchitectureGraph

    assert main(["graph", "summary", str(valid_file)]) == 0
    expected = ArchitectureGraph.from_json(valid_file.read_text()).summary()
    assert capsys.readouterr().out.rstrip("\n") == expected


def test_summary_of_an_invalid_file_exits_1_with_problems_on_stderr(
        invalid_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "summary", str(invalid_file)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{invalid_file}: node 'conv', field 'kernel_size'" in captured.err


def test_summary_of_a_missing_file_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "summary", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    _assert_one_clean_line(err)
    assert err.startswith("nas-service: error: ")


# ---- graph sample ------------------------------------------------------------------------------


def test_sample_without_search_spaces_fails_cleanly(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "nas_service.spaces", None)
    assert main(["graph", "sample", "--space", "cells", "--seed", "0"]) == 1
    err = capsys.readouterr().err
    _assert_one_clean_line(err)
    assert "search spaces are not available" in err


@pytest.mark.usefixtures("spaces_available")
@pytest.mark.parametrize("space", ["cells", "macro", "families", "families[resnet,vit]"])
def test_sample_prints_a_valid_graph_and_is_seed_deterministic(
        space: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nas_service import ArchitectureGraph

    argv = ["graph", "sample", "--space", space, "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    graph = ArchitectureGraph.from_json(first)
    assert graph.input_shape == (1, 28, 28)
    assert graph.num_classes == 10
    assert main(argv) == 0
    assert capsys.readouterr().out == first


@pytest.mark.usefixtures("spaces_available")
def test_sample_writes_the_output_file_with_the_requested_shape(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas_service import ArchitectureGraph

    out = tmp_path / "g.json"
    assert main(["graph", "sample", "--space", "cells", "--seed", "1", "--input-shape", "3,32,32",
                 "--num-classes", "7", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    graph = ArchitectureGraph.from_json(out.read_text())
    assert graph.input_shape == (3, 32, 32)
    assert graph.num_classes == 7


@pytest.mark.usefixtures("spaces_available")
def test_sample_from_an_unknown_space_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "sample", "--space", "no-such-space", "--seed", "0"]) == 1
    _assert_one_clean_line(capsys.readouterr().err)


def test_db_upgrade_is_idempotent_and_current_reports_the_revision(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert main(["db", "current", "--url", url]) == 0
    assert "not migrated" in capsys.readouterr().out
    assert main(["db", "upgrade", "--url", url]) == 0
    assert "(was None)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--url", url]) == 0
    assert "was" not in capsys.readouterr().out
    assert main(["db", "current", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == lines[1].split()[-1] != "migrated"


def test_db_upgrade_of_an_unreachable_database_is_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    assert main(["db", "upgrade", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nas-service: error: cannot reach the database")
    assert "Traceback" not in err


def test_train_and_evaluate_commands_explain_a_missing_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.safetensors"
    assert main(["evaluate-ghn", "--ghn", str(missing), "--out", str(tmp_path)]) == 1
    assert "GHN checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate-ghn", "rank-ghn"])
def test_held_out_spaces_that_do_not_exist_are_named(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--spaces", "cells,nowhere", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--spaces" in err and "nowhere" in err and "Traceback" not in err
