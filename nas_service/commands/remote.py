"""``nas-service predict | search | jobs | cancel | tasks | download``: the commands that talk
to a running service over HTTP, through :class:`nas_service.client.Client`.

They work the same against ``nas-service serve`` on this machine and a remote deployment:
``--url`` (default ``$NAS_URL``, else ``http://127.0.0.1:8000``) and ``--api-key`` (default
``$NAS_API_KEY``). An error answer from the service is printed as its problem (status, title,
detail, and each located error) on stderr, exit status 1, never as a traceback.

``predict FILE`` takes a ``nas-graph/1`` JSON file, or a Python file that defines the network
(see :func:`load_python_model` for the convention).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_service.commands.arguments import (
    STDIN,
    AddParser,
    positive_int,
    read_input,
    sample_shape,
)
from nas_service.commands.errors import CommandError, print_error, reports_client_errors
from nas_service.commands.output import PROG, print_json, print_stderr, table

if TYPE_CHECKING:
    import torch

    from nas_service.client import Architecture, Candidate, Client, Job, Task

MODEL_NAMES = ("model", "build")
"""What ``predict`` looks for in a Python file, in this order."""


# ------------------------------------------------------------------------------------------------
# Shared by these commands: connection options, number formats
# ------------------------------------------------------------------------------------------------


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service")
    g.add_argument("--url", default=None,
                   help="the service's root URL (default: $NAS_URL, else http://127.0.0.1:8000)")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="API key (default: $NAS_API_KEY)")
    g.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="per-request timeout (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3, metavar="N",
                   help="re-sends after a connection error, 503 or 429, with exponential "
                        "backoff (default: %(default)s)")


def _client(args: argparse.Namespace) -> Client:
    from nas_service.client import API_KEY_ENV, DEFAULT_URL, URL_ENV, Client

    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        return Client(url, key, timeout=args.timeout, retries=args.retries)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _score(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _count(value: int | None) -> str | None:
    return None if value is None else f"{value:,}"


_SCORE_LABELS = {"estimated-trained-accuracy": "est. trained acc.",
                "predicted-accuracy": "predicted acc.",
                "negative-predicted-bpc": "minus predicted bpc",
                "short-training-accuracy": "short-training acc."}
"""A candidate's ``score_kind`` as a column header."""


def _score_columns(candidates: Sequence[Candidate | None]) -> tuple[str, bool]:
    """The header of a column of these candidates' scores (what they are; "score" when they
    differ or the service does not say), and whether a column of their predicted accuracy
    beside it says more (some score is the ranking head's estimate or a short training's)."""
    kinds = {c.score_kind for c in candidates if c is not None and c.score_kind}
    label = _SCORE_LABELS.get(next(iter(kinds)), "score") if len(kinds) == 1 else "score"
    return label, bool(kinds & {"estimated-trained-accuracy", "short-training-accuracy"})


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def add_predict(add_parser: AddParser) -> None:
    p = add_parser(
        "predict", help="score an architecture on a running service",
        description="Send one architecture to the service (POST /v1/architectures) and print "
                    "its surrogate accuracy with GHN-predicted weights, size and checkpoint. "
                    "FILE is a nas-graph/1 JSON file (- for stdin) or a Python file (*.py) that "
                    "defines the network: a top-level `model` (a torch.nn.Module, or a function "
                    "returning one) or a `build()` function; an optional top-level "
                    "`input_shape` (one sample, e.g. (1, 28, 28)) overrides the task's. "
                    "Or give --space and --seed to score a sampled architecture.")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="graph JSON file, - for stdin, or a Python file defining `model`")
    p.add_argument("--space", default=None, help="score the architecture of a search space...")
    p.add_argument("--seed", type=int, default=None, help="...with this seed")
    p.add_argument("--task", default="fashion-mnist", help="task name (default: %(default)s)")
    p.add_argument("--input-shape", type=sample_shape, default=None, metavar="C,H,W",
                   help="for a Python file: the sample shape to trace the module with "
                        "(default: its `input_shape`, else the task's)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    _add_connection(p)
    p.set_defaults(handler=_predict)


def load_python_model(path: str | os.PathLike[str]) -> tuple[torch.nn.Module,
                                                             tuple[int, ...] | None]:
    """Runs the Python file at ``path`` (as a script whose ``__name__`` is not ``"__main__"``, so
    a training block under ``if __name__ == "__main__":`` does not run) and returns its network
    and declared input shape.

    The convention: the file defines ``model``, either a ``torch.nn.Module`` or a function (or
    class) that returns one when called without arguments, or else a ``build()`` function that
    does. An optional top-level ``input_shape`` (one sample's shape, such as ``(1, 28, 28)``) is
    returned too. Raises :class:`CommandError` when none is found or running the file fails.
    """
    import runpy

    import torch

    try:
        namespace = runpy.run_path(str(path), run_name="__nas_service_model__")
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - the user's file: report its error in one line
        raise CommandError(f"{path}: running it raised {type(e).__name__}: {e}") from None
    found = None
    for name in MODEL_NAMES:
        value = namespace.get(name)
        if value is None:
            continue
        if isinstance(value, torch.nn.Module):
            found = value
        elif callable(value):
            try:
                found = value()
            except Exception as e:  # noqa: BLE001
                raise CommandError(f"{path}: {name}() raised {type(e).__name__}: {e}") from None
            if not isinstance(found, torch.nn.Module):
                raise CommandError(f"{path}: {name}() returned {type(found).__name__}, not a "
                                   "torch.nn.Module")
        else:
            raise CommandError(f"{path}: `{name}` is a {type(value).__name__}, not a "
                               "torch.nn.Module or a function returning one")
        break
    if found is None:
        raise CommandError(f"{path}: defines no `model` (a torch.nn.Module or a function "
                           "returning one) and no `build()` function")
    shape = namespace.get("input_shape")
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise CommandError(f"{path}: input_shape must be a sequence of ints, got "
                               f"{shape!r}") from None
    return found, shape


def _predict_source(args: argparse.Namespace) -> tuple[Any, tuple[int, ...] | None]:
    """What to send: a graph document, a module (with its input shape) or space and seed."""
    sampled = args.space is not None or args.seed is not None
    if sampled == (args.file is not None):
        raise CommandError("give FILE, or --space and --seed")
    if sampled:
        if args.space is None or args.seed is None:
            raise CommandError("--space and --seed go together")
        return {"space": args.space, "seed": args.seed}, None
    if args.file != STDIN and Path(args.file).suffix == ".py":
        module, shape = load_python_model(args.file)
        return module, args.input_shape or shape
    if args.input_shape is not None:
        raise CommandError("--input-shape is for Python files; a graph has its own input shape")
    data = read_input(args.file)
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CommandError(f"{args.file}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"{args.file}: expected a nas-graph/1 object, got a "
                           f"{type(doc).__name__}")
    return doc, None


def _architecture_lines(result: Architecture, base_url: str) -> list[str]:
    score = result.score
    if score is not None:
        how = ", ".join(x for x in (score.name, score.split,
                                    f"{score.images:,} images" if score.images else None) if x)
        accuracy = f"{score.value:.4f}  ({how})"
    else:
        accuracy = "-"
    timings = ", ".join(f"{k} {v:.3f} s" for k, v in result.timings.items()) or "-"
    checkpoint = "-"
    if result.checkpoint is not None:
        size = result.checkpoint.size_bytes
        checkpoint = base_url + result.checkpoint.url + (f" ({size:,} bytes)" if size else "")
    ranking = score.ranking if score is not None else None
    rows = [("architecture", result.id), ("name", result.name or "-"), ("task", result.task),
            ("accuracy", accuracy),
            *([("estimated", f"{ranking.value:.4f}  (trained: {ranking.target}; ranking head)")]
              if ranking is not None else []),
            ("parameters", f"{result.num_parameters:,}"),
            ("MACs", f"{result.flops:,}"), ("ghn", result.ghn_version or "-"),
            ("cached", {True: "yes", False: "no", None: "-"}[result.cached]),
            ("timings", timings), ("checkpoint", checkpoint)]
    return [f"{k:<13}{v}" for k, v in rows]


@reports_client_errors
def _predict(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError, UnsupportedModuleError

    source, input_shape = _predict_source(args)
    with _client(args) as client:
        try:
            result = client.predict(source, task=args.task, input_shape=input_shape)
        except UnsupportedModuleError as e:
            raise CommandError(f"{args.file}: the module cannot be expressed in nas-graph/1: "
                               f"{e}") from None
        except GraphValidationError as e:
            raise CommandError(f"{args.file}: " + "; ".join(map(str, e.problems))) from None
        except ValueError as e:  # an unknown task when looking up its input shape
            raise CommandError(str(e)) from None
        if args.json:
            print_json(result.to_dict())
        else:
            print("\n".join(_architecture_lines(result, client.base_url)))
    return 0


# ------------------------------------------------------------------------------------------------
# search | jobs | cancel
# ------------------------------------------------------------------------------------------------


def add_search(add_parser: AddParser) -> None:
    p = add_parser(
        "search", help="queue a search job on a running service (and wait for it)",
        description="Queue a search job (POST /v1/search-jobs). The job id is printed on "
                    "stdout at once; with --wait, a progress bar follows it on stderr and the "
                    "best candidates are printed when it finishes.")
    p.add_argument("--space", default="cells", help="search space (default: %(default)s)")
    p.add_argument("--budget", type=positive_int, required=True, metavar="N",
                   help="candidates to evaluate")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this long (counted from the worker's claim)")
    p.add_argument("--max-parameters", type=positive_int, default=None, metavar="N")
    p.add_argument("--max-flops", type=positive_int, default=None, metavar="N",
                   help="multiply-accumulates per sample")
    p.add_argument("--strategy", choices=["random", "evolution"], default="random")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--task", default="fashion-mnist", help="task name (default: %(default)s)")
    p.add_argument("--rungs", type=_rungs, default=None, metavar="N,N,...",
                   help="multi-fidelity scoring: validation images of each rung, the last the "
                        "service's full budget (e.g. 250,1000); every candidate is scored on "
                        "the first, the best 1/ETA of each rung on the next")
    p.add_argument("--eta", type=positive_int, default=None,
                   help="with --rungs: the fraction promoted, 1/ETA (service default 4)")
    p.add_argument("--short-training", type=positive_int, nargs="?", const=True, default=None,
                   metavar="STEPS",
                   help="rank candidates (with --rungs: those of the last rung) by their "
                        "accuracy after STEPS SGD steps from their default initialisation "
                        "(service default 8) instead of the GHN's score: about twice the time "
                        "a candidate, and a far better ranking out of the GHN's own spaces")
    p.add_argument("--idempotency-key", default=None, metavar="KEY",
                   help="re-running with the same key and options returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between status requests while waiting (default: %(default)s)")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up waiting after this long (the job keeps running)")
    p.add_argument("--top", type=positive_int, default=5,
                   help="best candidates to print when finished (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(p)
    p.set_defaults(handler=_search)


def _rungs(text: str) -> list[int]:
    """``250,1000`` → ``[250, 1000]``."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected image counts separated by commas, e.g. 250,1000; got {text!r}") from None


def _fidelity(c: Candidate) -> str:
    """``1,000 full`` or ``250 rung 0``: the images a score was taken on."""
    if c.rung is None or c.eval_images is None:
        return "-"
    return f"{c.eval_images:,} " + ("full" if c.full_fidelity else f"rung {c.rung}")


def _candidate_table(candidates: Sequence[Candidate]) -> str:
    label, with_predicted = _score_columns(candidates)
    headers = ["rank", "index", "status", label,
               *(["predicted acc."] if with_predicted else []), "images", "parameters", "MACs",
               "candidate"]
    rows = [[rank, c.index, c.status, _score(c.score),
             *([_score(c.predicted_accuracy)] if with_predicted else []), _fidelity(c),
             _count(c.num_parameters), _count(c.flops), c.id]
            for rank, c in enumerate(candidates, 1)]
    if any(c.reason for c in candidates):  # why a candidate was rejected or failed
        headers.append("reason")
        for row, c in zip(rows, candidates, strict=True):
            row.append(c.reason or "")
    return table(headers, rows,
                 right=(0, 1, 3, 4, 6, 7) if with_predicted else (0, 1, 3, 5, 6))


def _best_line(best: Candidate | None) -> str:
    """``0.9120 est. trained accuracy, predicted 0.7600 (candidate 6, <id>)``."""
    if best is None or best.score is None:
        return "-"
    what = ""
    if best.score_kind == "estimated-trained-accuracy":
        what = " est. trained accuracy" + (f", predicted {best.predicted_accuracy:.4f}"
                                           if best.predicted_accuracy is not None else "")
    elif best.score_kind == "predicted-accuracy":
        what = " predicted accuracy"
    elif best.score_kind == "short-training-accuracy":
        what = " after short training" + (f", predicted {best.predicted_accuracy:.4f}"
                                          if best.predicted_accuracy is not None else "")
    return f"{best.score:.4f}{what} (candidate {best.index}, {best.id})"


def _ranking_line(job: Job) -> str:
    """``GHN score`` or ``short training, 8 steps (Kendall tau 0.73 on ...)``."""
    ranking = job.ranking or {}
    if ranking.get("method") != "short-training":
        return "the GHN's score"
    line = f"short training, {ranking.get('steps')} SGD steps from the default initialisation"
    if ranking.get("kendall_tau") is not None:
        line += f" (Kendall tau {ranking['kendall_tau']:.2f} on {ranking.get('measured_on')})"
    return line


def _job_lines(job: Job) -> list[str]:
    constraints = ", ".join(f"{k} {v:,}" for k, v in (("max_parameters",
                                                       job.constraints.max_parameters),
                                                      ("max_flops", job.constraints.max_flops))
                            if v is not None) or "none"
    budget = f"{job.budget.candidates:,} candidates" + (
        f", {job.budget.seconds:g} s" if job.budget.seconds else "")
    rows = [("job", job.id), ("status", job.status + (" (cancel requested)"
                                                      if job.cancel_requested and not job.finished
                                                      else "")),
            ("search", f"{job.space}, {job.strategy}, seed {job.seed}, task {job.task}"),
            ("budget", budget), ("constraints", constraints),
            ("fidelity", "full budget for every candidate" if not job.fidelity else
             " -> ".join(f"{r:,}" for r in job.fidelity["rungs"])
             + f" images, best 1/{job.fidelity['eta']} of brackets of "
               f"{job.fidelity['bracket']}"),
            ("ranked by", _ranking_line(job)),
            ("progress", f"{job.progress.done}/{job.progress.total}"),
            ("rate", f"{job.rate:.2f} candidates/s" if job.rate else "-"),
            ("best", _best_line(job.best_candidate))]
    if job.error:
        rows.append(("error", job.error))
    return [f"{k:<13}{v}" for k, v in rows]


def _finished_status(job: Job) -> int:
    if job.status == "succeeded":
        return 0
    print_error(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return 1


@reports_client_errors
def _search(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.submit_search(
            space=args.space, candidates=args.budget, seconds=args.seconds,
            max_parameters=args.max_parameters, max_flops=args.max_flops, task=args.task,
            seed=args.seed, strategy=args.strategy, idempotency_key=args.idempotency_key,
            rungs=args.rungs, eta=args.eta, short_training=args.short_training)
        if not args.wait:
            if args.json:
                print_json(job.to_dict())
            else:
                print(job.id)
                print_stderr(f"job {job.id} {job.status}: {job.space}, {job.strategy}, seed {job.seed}, "
                     f"{job.budget.candidates:,} candidates; follow it with "
                     f"`{PROG} jobs {job.id}`")
            return 0
        if not args.json:
            print(job.id, flush=True)
        try:
            job = client.wait(job, progress=not args.no_progress, poll=args.poll,
                              timeout=args.wait_timeout)
        except KeyboardInterrupt:
            print_stderr(f"stopped waiting; job {job.id} goes on running on the service "
                 f"(`{PROG} cancel {job.id}` stops it)")
            return 130
        best = client.candidates(job, top=args.top) if job.progress.done else []
        if args.json:
            print_json({"job": job.to_dict(), "candidates": [c.to_dict() for c in best]})
        else:
            print("\n".join(_job_lines(job)))
            if best:
                print()
                print(_candidate_table(best))
    return _finished_status(job)


def add_jobs(add_parser: AddParser) -> None:
    p = add_parser("jobs", help="list search jobs, or show one with its best candidates",
                   description="Without JOB: a table of jobs, newest first. With JOB: its "
                               "status, progress and best candidates.")
    p.add_argument("job", nargs="?", metavar="JOB", help="a job id")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                   default=None, help="only jobs with this status")
    p.add_argument("--limit", type=positive_int, default=50,
                   help="jobs to list (default: %(default)s)")
    p.add_argument("--top", type=positive_int, default=5,
                   help="candidates to show with JOB (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(p)
    p.set_defaults(handler=_jobs)


def _when(job: Job) -> str:
    return job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@reports_client_errors
def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.job is not None:
            job = client.job(args.job)
            best = client.candidates(job, top=args.top) if job.progress.done else []
            if args.json:
                print_json({"job": job.to_dict(), "candidates": [c.to_dict() for c in best]})
                return 0
            print("\n".join(_job_lines(job)))
            if best:
                print()
                print(_candidate_table(best))
            return 0
        jobs = client.jobs(status=args.status, limit=args.limit)
    if args.json:
        print_json([j.to_dict() for j in jobs])
        return 0
    if not jobs:
        print_stderr("no jobs" + (f" with status {args.status}" if args.status else ""))
        return 0
    label, with_predicted = _score_columns([j.best_candidate for j in jobs])
    rows = [(j.id, j.status, j.space, j.strategy, f"{j.progress.done}/{j.progress.total}",
             _score(j.best_candidate.score if j.best_candidate else None),
             *([_score(j.best_candidate.predicted_accuracy if j.best_candidate else None)]
               if with_predicted else []), _when(j))
            for j in jobs]
    headers = ["job", "status", "space", "strategy", "progress", f"best {label}",
               *(["predicted acc."] if with_predicted else []), "created"]
    print(table(headers, rows, right=(4, 5, 6) if with_predicted else (4, 5)))
    return 0


def add_cancel(add_parser: AddParser) -> None:
    p = add_parser("cancel", help="cancel a search job",
                   description="A queued job is cancelled at once, a running one at its "
                               "worker's next heartbeat; a finished job is left as it is.")
    p.add_argument("job", metavar="JOB", help="a job id")
    _add_connection(p)
    p.set_defaults(handler=_cancel)


@reports_client_errors
def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job)
    if job.status == "running":
        state = "cancel requested (it stops at its worker's next heartbeat)"
    elif job.status in ("succeeded", "failed"):
        state = f"already {job.status}, nothing to cancel"
    else:
        state = job.status
    print(f"job {job.id}: {state}")
    return 0


# ------------------------------------------------------------------------------------------------
# tasks add | list | show
# ------------------------------------------------------------------------------------------------


def add_tasks(add_parser: AddParser) -> None:
    p = add_parser("tasks", help="register a dataset as a task, list tasks, show one",
                   description="Tasks of a running service: the built-in ones and those "
                               "registered by uploading a dataset, which the service's GHN is "
                               "then adapted to (a background job).")
    sub = p.add_subparsers(title="tasks commands", metavar="COMMAND", required=True)
    a = sub.add_parser(
        "add", help="upload a dataset as a new task and follow its adaptation",
        description="Upload FILES as task NAME (POST /v1/tasks): one .npz holding x (uint8 "
                    "images N×H×W, N×H×W×C or N×C×H×W) and y (labels), optionally x_test and "
                    "y_test; or MNIST idx files (images and labels, train- and t10k-); or "
                    "CIFAR-10 python batches (data_batch_*, test_batch, batches.meta) or their "
                    ".tar.gz. Then wait for the service to adapt its GHN to the task, with a "
                    "progress bar (--no-wait: return at once).")
    a.add_argument("name", metavar="NAME", help="lowercase letters, digits and '-'")
    a.add_argument("files", nargs="+", metavar="FILE", help="the dataset's files")
    a.add_argument("--num-classes", type=positive_int, default=None,
                   help="the class count (default: the largest label + 1)")
    a.add_argument("--no-wait", action="store_true", help="do not wait for the adaptation")
    a.add_argument("--json", action="store_true", help="print the API's JSON answer")
    _add_connection(a)
    a.set_defaults(handler=_tasks_add)
    ls = sub.add_parser("list", help="a table of every task")
    ls.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(ls)
    ls.set_defaults(handler=_tasks_list)
    show = sub.add_parser("show", help="one task, with its adaptation's status and result")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(show)
    show.set_defaults(handler=_tasks_show)


def _adaptation_state(task: Task) -> str:
    a = task.adaptation
    if a is None:
        return "built in"
    return f"{a.status} {a.progress.done}/{a.progress.total}"


def _task_lines(task: Task) -> list[str]:
    lines = [f"task          {task.name}",
             f"input shape   {'x'.join(map(str, task.input_shape))}, "
             f"{task.num_classes} classes",
             f"scored        {'yes' if task.scored else 'no'}"]
    if task.registered:
        lines.append(f"uploaded      {task.format}: {_count(task.train_images)} training and "
                     f"{_count(task.test_images)} test images")
    a = task.adaptation
    if a is not None:
        lines.append(f"adaptation    {a.status}, step {a.progress.done} of {a.progress.total}"
                     + (f", attempt {a.attempts}" if a.attempts > 1 else ""))
        if a.error:
            lines.append(f"error         {a.error}")
        if a.result:
            r = a.result
            lines.append(f"result        loss {r.get('loss', float('nan')):.4f}, accuracy "
                         f"{r.get('accuracy', float('nan')):.4f} (last steps), "
                         f"{r.get('seconds', 0):.0f} s")
            for name, drift in sorted((r.get("drift") or {}).items()):
                lines.append(f"  drift of {name}: {drift:.2e} (relative change of its "
                             "predicted parameters)")
    return lines


@reports_client_errors
def _tasks_add(args: argparse.Namespace) -> int:
    for path in args.files:
        if not Path(path).is_file():
            raise CommandError(f"{path}: no such file")
    with _client(args) as client:
        task = client.add_task(args.name, args.files, num_classes=args.num_classes)
        if not args.no_wait:
            task = client.wait_for_task(task.name, progress=not args.json)
    if args.json:
        print_json(task.to_dict())
    else:
        print("\n".join(_task_lines(task)))
    return 1 if task.adaptation is not None and task.adaptation.status == "failed" else 0


@reports_client_errors
def _tasks_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tasks = client.tasks()
    if args.json:
        print_json([t.to_dict() for t in tasks])
        return 0
    rows = [(t.name, "x".join(map(str, t.input_shape)), t.num_classes,
             "yes" if t.scored else "no", _adaptation_state(t)) for t in tasks]
    print(table(["task", "input", "classes", "scored", "adaptation"], rows, right=(2,)))
    return 0


@reports_client_errors
def _tasks_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.registered_task(args.name)
    if args.json:
        print_json(task.to_dict())
    else:
        print("\n".join(_task_lines(task)))
    return 0


# ------------------------------------------------------------------------------------------------
# finetune | download
# ------------------------------------------------------------------------------------------------


def add_finetune(add_parser: AddParser) -> None:
    p = add_parser(
        "finetune", help="train a candidate from its predicted weights, against random init",
        description="Train a scored candidate (or architecture) from its GHN-predicted weights "
                    "with SGD, and the same network from PyTorch's default initialisation with "
                    "the same batches, and print both validation accuracies after every "
                    "epoch. ID is a candidate or architecture id on the service (its "
                    "checkpoint is downloaded), or the path of a checkpoint file saved by "
                    "`download`.")
    p.add_argument("id", metavar="ID", help="a candidate id, an architecture id, or a "
                                            ".safetensors checkpoint file")
    p.add_argument("--epochs", type=positive_int, default=1, help="default: %(default)s")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                   help="training images per epoch (default: the whole training split)")
    p.add_argument("--eval-images", type=positive_int, default=2000, metavar="N",
                   help="validation images scored after each epoch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the cosine schedule (default: the SGD "
                        "protocol's, 0.05)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where the task's data lies (default: NAS_DATA_ROOT or the system's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(p)
    p.set_defaults(handler=_finetune)


@reports_client_errors
def _finetune(args: argparse.Namespace) -> int:
    from nas_service.client import InvalidCheckpoint
    from nas_service.client.checkpoint import CheckpointFile
    from nas_service.data import DatasetError, load_task
    from nas_service.training.evaluate import SGD_LR
    from nas_service.training.finetune import finetune_against_random_init

    if Path(args.id).is_file():
        checkpoint = CheckpointFile.read(args.id)
    else:
        with _client(args) as client:
            checkpoint = client.fetch_checkpoint(args.id)
    try:
        net = checkpoint.module()
    except Exception as e:  # noqa: BLE001 - whatever torch or the graph layer says, in one line
        raise InvalidCheckpoint(f"{checkpoint.url}: the weights do not load into the graph's "
                                f"network: {type(e).__name__}: {e}") from None
    task = checkpoint.metadata.get("task") or "fashion-mnist"
    try:
        data = load_task(task, args.data_root)
    except DatasetError as e:
        raise CommandError(str(e)) from None
    report = finetune_against_random_init(
        net, checkpoint.graph, data, epochs=args.epochs, max_images=args.max_images,
        eval_images=args.eval_images, lr=args.lr if args.lr is not None else SGD_LR,
        seed=args.seed, progress=not args.no_progress)
    if args.json:
        print_json({"checkpoint": checkpoint.url, "task": task, **report.to_dict()})
        return 0
    print(f"{checkpoint.graph.name or args.id} on {task}: validation accuracy "
          f"({report.eval_images:,} images) after each epoch of {report.images_per_epoch:,} "
          f"training images")
    rows = [[epoch, f"{p:.4f}", f"{r:.4f}", f"{p - r:+.4f}"]
            for epoch, (p, r) in enumerate(zip(report.predicted, report.random_init,
                                               strict=True))]
    print(table(["epoch", "from predicted", "from random init", "difference"], rows,
                right=(0, 1, 2, 3)))
    print(f"seconds: {report.seconds['predicted']:.1f} from predicted, "
          f"{report.seconds['random_init']:.1f} from random init")
    return 0


def add_download(add_parser: AddParser) -> None:
    p = add_parser(
        "download", help="download an architecture's or a candidate's predicted weights",
        description="Download a checkpoint (safetensors; the nas-graph/1 JSON is in its "
                    "metadata), check its SHA-256 against the ETag and that it loads into "
                    "to_module(graph), and save it. Architecture and candidate ids look alike "
                    "(32 hex digits); ID is tried as an architecture, then as a candidate, "
                    "unless --architecture or --candidate says which.")
    p.add_argument("id", metavar="ID", help="an architecture id or a candidate id")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--architecture", dest="kind", action="store_const", const="architecture",
                      help="ID is an architecture id")
    kind.add_argument("--candidate", dest="kind", action="store_const", const="candidate",
                      help="ID is a candidate id")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="where to write it (default: ID.safetensors)")
    _add_connection(p)
    p.set_defaults(handler=_download, kind="auto")


@reports_client_errors
def _download(args: argparse.Namespace) -> int:
    from nas_service.client import InvalidCheckpoint

    with _client(args) as client:
        checkpoint = client.fetch_checkpoint(args.id, kind=args.kind)
    try:
        net = checkpoint.module()  # proves the file is usable before it is written
    except Exception as e:  # noqa: BLE001 - whatever torch or the graph layer says, in one line
        raise InvalidCheckpoint(f"{checkpoint.url}: the weights do not load into the graph's "
                                f"network: {type(e).__name__}: {e}") from None
    output = Path(args.output or f"{args.id}.safetensors")
    try:
        checkpoint.save(output)
    except OSError as e:
        raise CommandError(f"{output}: cannot write: {e.strerror or e}") from None
    graph = checkpoint.graph
    scores = checkpoint.scores
    parameters = sum(p.numel() for p in net.parameters())
    accuracy = (f", accuracy {scores['value']:.4f} ({scores.get('name', 'score')})"
                if "value" in scores else "")
    print(f"wrote {output}: {len(checkpoint.data):,} bytes, sha256 {checkpoint.sha256}")
    print(f"graph {graph.name or graph.content_hash()[:16]}: {len(graph.nodes)} nodes, "
          f"{parameters:,} parameters{accuracy}, task {checkpoint.metadata.get('task', '-')}")
    return 0
