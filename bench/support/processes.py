"""Starting and always stopping the service processes a benchmark measures.

A benchmark starts real ``nas-service serve`` / ``nas-service worker`` processes, so it must not
leave them behind when it fails, times out or is interrupted:

* each child is started in its own session, so a Ctrl-C in the terminal reaches the benchmark
  alone, which then stops its children in order (SIGTERM, and SIGKILL after a grace period);
* :func:`sigterm_as_interrupt` turns a SIGTERM sent to the benchmark into ``KeyboardInterrupt``,
  so the same ``finally`` blocks run; a second interrupt while stopping kills the remaining
  children at once instead of waiting for them;
* children write to a log file, not a pipe: a chatty server cannot block on a full pipe, and
  the end of the log is printed when a process dies early.

Only processes started here are signalled, by their own pid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_SECONDS = 60.0
"""How long a child may take to stop after SIGTERM (a worker finishes its batch first)."""


def sigterm_as_interrupt() -> None:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread: cleanup runs as on Ctrl-C. SIGINT
    does too even where it was ignored (a background job of a non-interactive shell)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_benchmark(run: Callable[[], dict[str, Any]], summarise: Callable[[dict[str, Any]], None],
                  output: Path) -> dict[str, Any] | None:
    """Runs a benchmark that starts processes: ``run()`` with SIGTERM as an interrupt (its
    cleanup stops them), then prints ``summarise(report)`` and writes the report to ``output``
    as JSON. ``None`` when it was interrupted (nothing is written)."""
    sigterm_as_interrupt()
    try:
        report = run()
    except KeyboardInterrupt:
        print("interrupted: the processes it started were stopped", file=sys.stderr)
        return None
    summarise(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {relative(output)}")
    return report


def service_env(data_dir: Path, *, threads: int | None, **nas: str) -> dict[str, str]:
    """This process's environment with every ``NAS_*`` variable replaced: the embedded defaults
    under ``data_dir`` plus ``nas`` (``NAS_`` prefixed by the caller). ``NAS_DATASETS_DIR`` is
    kept: it says where the data is, not how the service behaves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS_")}
    if "NAS_DATASETS_DIR" in os.environ:
        env["NAS_DATASETS_DIR"] = os.environ["NAS_DATASETS_DIR"]
    env.update(NAS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **nas)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nas_service_command(*args: str) -> list[str]:
    """``nas-service ARGS`` run by this interpreter (the benchmark's own environment)."""
    return [sys.executable, "-m", "nas_service", *args]


class Child:
    """One started process, its log file, and how to stop it."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(list(command), env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Raises with the end of the log if the process has exited."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (at once if interrupted meanwhile);
        returns the exit status."""
        try:
            if self.alive():
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    print(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace:g} s: "
                          "killing it", file=sys.stderr)
                    self.kill()
                except KeyboardInterrupt:
                    self.kill()
                    raise
        finally:
            self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        try:
            if self.alive():
                self.process.kill()
            self.process.wait(timeout=30)
        finally:
            self._log.close()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (Linux ``/proc``; ``None`` elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # Fields 14 and 15 of proc(5) (utime, stime); the split above starts at field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to start children into; all of them are stopped when the block ends, however it
    ends (last started, first stopped)."""
    started: list[Child] = []
    try:
        yield started
    finally:
        interrupted: KeyboardInterrupt | None = None
        for child in reversed(started):
            try:
                if interrupted is None:
                    child.stop()
                else:
                    child.kill()
            except KeyboardInterrupt as e:  # asked again: no more waiting for the others
                interrupted = e
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {e}", file=sys.stderr)
        if interrupted is not None:
            raise interrupted


def wait_ready(base_url: str, server: Child, timeout: float) -> float:
    """Polls ``/readyz`` until it answers 200; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        server.check_alive()
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{server.name} was not ready after {timeout:g} s:\n{server.log_tail()}")


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_wall_and_cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``repeats`` calls of ``fn``, after one
    untimed warm-up call (the CPU time is less sensitive to other load on a shared machine)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall), statistics.median(cpu)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` in ``(0, 100]``)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int] | None:
    """``count``, ``mean`` and the p50/p90/p99/max of ``seconds``, in milliseconds."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    ms = {f"p{p}_ms": round(percentile(ordered, p) * 1e3, 2) for p in (50, 90, 99)}
    return {"count": len(ordered), "mean_ms": round(sum(ordered) / len(ordered) * 1e3, 2),
            **ms, "max_ms": round(ordered[-1] * 1e3, 2)}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; the load average says how busy the machine was."""
    import torch

    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---- memory of a process tree ------------------------------------------------------------------


def memory_bytes(pid: int) -> int | None:
    """The proportional set size of ``pid`` (its private pages and its share of pages it shares
    with other processes: libraries, copy-on-write pages), else its RSS; ``None`` once it is
    gone. Summed over processes, shared pages count once."""
    for path, prefix in ((f"/proc/{pid}/smaps_rollup", "Pss:"),
                         (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return None


def children_by_parent() -> dict[int, list[int]]:
    """Every running process's children, read once from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    return parents


def tree_memory(pid: int, children: dict[int, list[int]] | None = None) -> dict[int, int]:
    """:func:`memory_bytes` of ``pid`` and of every process descended from it (a server's
    scoring processes and worker), by pid; processes gone meanwhile are left out."""
    children = children_by_parent() if children is None else children
    sizes, todo = {}, [pid]
    while todo:
        p = todo.pop()
        size = memory_bytes(p)
        if size is not None:
            sizes[p] = size
        todo.extend(children.get(p, []))
    return sizes


class PeakMemory:
    """The peak of a process tree's summed memory (:func:`tree_memory`) while the ``with``
    block runs, sampled every ``interval`` seconds by a thread of its own."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.parts: dict[int, int] = {}  # each process's memory at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            sizes = tree_memory(self.pid)
            if (total := sum(sizes.values())) > self.peak:
                self.peak, self.parts = total, sizes
            if self._stop.wait(self.interval):
                return

    def report(self, name: Callable[[int], str] = str) -> dict[str, Any]:
        """The peak in MiB and each process's part of it, by ``name(pid)``."""
        return {"peak_mib": round(self.peak / 2**20),
                "parts_at_peak_mib": mib_by_name(self.parts, name),
                "measure": "proportional set size summed over the process and its descendants"}


def mib_by_name(sizes: dict[int, int], name: Callable[[int], str] = str) -> dict[str, int]:
    """Bytes by pid (:func:`tree_memory`) as MiB by ``name(pid)``, in pid order."""
    return {name(pid): round(size / 2**20) for pid, size in sorted(sizes.items())}
