"""The ``nas-service`` command line.

Every subcommand is one ``_add_<name>(add_parser)`` function that declares its arguments and
points ``handler`` at a ``_<name>(args) -> int`` function; :data:`COMMANDS` lists them and is the
one place a new command is registered. Handlers import what they need inside their body, so
``nas-service info`` never pays for the web or database stack and a command whose package is not
installed yet fails on its own without breaking the others.

Exit status: 0 success, 1 the command failed (an invalid graph, an unreadable file, a bad value),
2 a usage error reported by argparse, 130 interrupted. A user mistake is reported as one line on
stderr, never as a traceback: handlers raise :class:`CommandError` for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nas_service.version import __version__

if TYPE_CHECKING:
    from nas_service.graph import ArchitectureGraph

PROG = "nas-service"
STDIN = "-"

AddParser = Callable[..., argparse.ArgumentParser]
"""``add_parser`` of an argparse sub-parsers object: what each ``_add_<name>`` receives."""


class CommandError(Exception):
    """A user mistake (missing file, bad value): printed as ``nas-service: error: <message>``,
    exit status 1."""


# ------------------------------------------------------------------------------------------------
# Helpers shared by commands
# ------------------------------------------------------------------------------------------------


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _read_input(path: str) -> bytes:
    """The bytes of ``path`` (``-``: standard input). Raises :class:`CommandError` if unreadable."""
    if path == STDIN:
        # Tests swap sys.stdin for a StringIO, which has no binary buffer.
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read()
        return data.encode() if isinstance(data, str) else data
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None


def _display_name(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def _load_graph(path: str) -> ArchitectureGraph:
    """Reads and validates one ``nas-graph/1`` file; problems are raised, not printed."""
    from nas_service.graph import ArchitectureGraph

    return ArchitectureGraph.from_json(_read_input(path))


def _counts(graph: ArchitectureGraph) -> str:
    return (f"{len(graph.nodes)} nodes, {graph.num_parameters:,} parameters, "
            f"{graph.flops:,} MACs")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes such as 1,28,28, got {text!r}") from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 1 to 3 positive sizes (C,H,W / T,D / F), got {text!r}")
    return shape


def _device() -> str:
    """The device the GHN runs on, by the rule of :func:`nas_service.ghn.checkpoint.resolve_device`
    (``$NAS_DEVICE``, else ``cuda`` when available, else ``cpu``); a bad ``$NAS_DEVICE`` raises
    :class:`CommandError`."""
    from nas_service.ghn.checkpoint import resolve_device

    try:
        return str(resolve_device())
    except (RuntimeError, ValueError):
        raise CommandError(f"NAS_DEVICE={os.environ.get('NAS_DEVICE')!r} is not a torch device "
                           "(use cpu, cuda or cuda:N)") from None


def _example_graph() -> Path | None:
    """``examples/graphs/small_cnn.json`` of a source checkout (or of the working directory)."""
    relative = Path("examples", "graphs", "small_cnn.json")
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / relative).is_file():
            return root / relative
    return None


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


def _add_info(add_parser: AddParser) -> None:
    p = add_parser("info", help="print versions, the device and what this installation has",
                   description="Print the version, torch and its device, the op vocabulary, "
                               "search spaces, tasks and the bundled example graph.")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    import torch

    from nas_service.graph import OP_NAMES

    device = _device()
    origin = "from NAS_DEVICE" if os.environ.get("NAS_DEVICE", "").strip() else (
        "CUDA available" if device == "cuda" else "CUDA not available")
    print(f"{PROG} {__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__}")
    print(f"device       {device} ({origin})")
    print(f"graph ops    {len(OP_NAMES)} in nas-graph/1")

    try:
        import nas_service.spaces as spaces
    except ImportError as e:
        spaces, why = None, str(e)
    else:  # an empty folder imports as a namespace package: require the real entry point
        why = "nas_service.spaces has no get_space()"
    if spaces is None or not hasattr(spaces, "get_space"):
        print(f"spaces       not available ({why})")
    else:
        names = (spaces.list_spaces() if hasattr(spaces, "list_spaces")
                 else sorted(getattr(spaces, "SPACES", {})))
        print(f"spaces       {', '.join(names) if names else '(none listed)'}")

    try:
        from nas_service.data import (
            DATASETS_DIR_ENV,
            DatasetError,
            get_task,
            list_tasks,
            resolve_root,
        )
    except ImportError as e:
        print(f"tasks        not available ({e})")
    else:
        print("tasks")
        for name in list_tasks():
            spec = get_task(name)
            try:
                folder, _ = resolve_root(spec)
                where = f"{folder} ({'present' if folder.is_dir() else 'missing'})"
            except DatasetError:  # no default folder for this task
                where = f"no folder (set {DATASETS_DIR_ENV})"
            shape = "x".join(map(str, spec.input_shape))
            print(f"  {name:<14} {shape:<8} {spec.num_classes:>3} classes  {where}")

    example = _example_graph()
    if example is not None:
        from nas_service.graph import GraphValidationError

        try:
            graph = _load_graph(str(example))
        except GraphValidationError as e:
            for problem in e.problems:
                _err(f"{example}: {problem}")
            return 1
        print(f"example      {example}: valid, {_counts(graph)}")
        print(graph.summary())
    return 0


# ------------------------------------------------------------------------------------------------
# graph validate | summary | sample
# ------------------------------------------------------------------------------------------------


def _add_graph(add_parser: AddParser) -> None:
    p = add_parser("graph", help="validate, summarise and sample nas-graph/1 documents",
                   description="Work with nas-graph/1 architecture documents.")
    sub = p.add_subparsers(title="graph commands", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="check graph files; exit 1 if any is invalid",
                       description="Validate nas-graph/1 files. Each problem is printed as "
                                   "FILE: node 'x', field 'y': message.")
    v.add_argument("files", nargs="+", metavar="FILE", help="a JSON file, or - for stdin")
    v.set_defaults(handler=_graph_validate)

    s = sub.add_parser("summary", help="print a table of nodes, shapes, parameters and MACs")
    s.add_argument("file", metavar="FILE", help="a JSON file, or - for stdin")
    s.set_defaults(handler=_graph_summary)

    g = sub.add_parser("sample", help="sample an architecture from a search space",
                       description="Sample one architecture, deterministically from its seed, "
                                   "and print it as nas-graph/1 JSON.")
    g.add_argument("--space", required=True, metavar="{cells,macro}",
                   help="search space name")
    g.add_argument("--seed", required=True, type=int, help="the same seed gives the same graph")
    g.add_argument("--input-shape", type=_shape, default=(1, 28, 28), metavar="C,H,W",
                   help="per-sample input shape (default: 1,28,28)")
    g.add_argument("--num-classes", type=_positive_int, default=10,
                   help="number of classes (default: 10)")
    g.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    g.set_defaults(handler=_graph_sample)


def _graph_validate(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    failed = 0
    for path in args.files:
        name = _display_name(path)
        try:
            graph = _load_graph(path)
        except CommandError as e:
            _err(str(e))
            failed += 1
            continue
        except GraphValidationError as e:
            for problem in e.problems:
                print(f"{name}: {problem}")
            failed += 1
            continue
        print(f"{name}: valid ({_counts(graph)})")
    if failed and len(args.files) > 1:
        _err(f"{failed} of {len(args.files)} files invalid")
    return 1 if failed else 0


def _graph_summary(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    try:
        graph = _load_graph(args.file)
    except GraphValidationError as e:
        for problem in e.problems:
            _err(f"{_display_name(args.file)}: {problem}")
        return 1
    print(graph.summary())
    return 0


def _graph_sample(args: argparse.Namespace) -> int:
    from nas_service.graph import GraphValidationError

    try:
        from nas_service.spaces import get_space
    except ImportError as e:
        raise CommandError(f"search spaces are not available here ({e})") from None
    try:
        space = get_space(args.space)
    except (LookupError, ValueError) as e:
        raise CommandError(str(e.args[0]) if e.args else f"unknown space {args.space!r}") from None
    try:
        graph = space.sample(args.seed, input_shape=args.input_shape,
                             num_classes=args.num_classes)
    except GraphValidationError as e:
        for problem in e.problems:
            _err(f"{args.space}/seed {args.seed}: {problem}")
        return 1
    except ValueError as e:  # e.g. an input shape the space cannot handle
        raise CommandError(f"{args.space}: {e}") from None
    text = graph.to_json(indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{args.output}: cannot write: {e.strerror or e}") from None
    _err(f"wrote {args.output}: {_counts(graph)}")
    return 0


# ------------------------------------------------------------------------------------------------
# train-ghn
# ------------------------------------------------------------------------------------------------


def _add_train_ghn(add_parser: AddParser) -> None:
    from dataclasses import fields

    from nas_service.training.config import TrainingConfig

    defaults = {f.name: f.default for f in fields(TrainingConfig) if f.name != "ghn"}
    p = add_parser("train-ghn", help="train a graph hypernetwork (resumable)",
                   description="Train a GHN with meta-batches of sampled architectures. Every "
                               "random choice derives from --seed and the step, so a run "
                               "resumed from OUT continues exactly where it stopped. OUT holds "
                               "ghn.safetensors, optimizer.safetensors, state.json, log.jsonl.")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (resumed if present)")
    p.add_argument("--task", default=defaults["task"], help="task name (default: %(default)s)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="the task's data folder")
    p.add_argument("--spaces", default=",".join(defaults["spaces"]),
                   help="comma-separated search spaces (default: %(default)s)")
    for name in ("steps", "meta_batch", "batch_size", "warmup_steps", "max_parameters",
                 "max_flops", "validate_every", "validation_architectures",
                 "checkpoint_every", "log_every"):
        p.add_argument("--" + name.replace("_", "-"), type=_positive_int, default=defaults[name],
                       help="default: %(default)s")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="default: %(default)s")
    for name in ("lr", "weight_decay", "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=defaults[name],
                       help="default: %(default)s")
    p.add_argument("--hidden", type=_positive_int, default=None, help="GHN width")
    p.add_argument("--layers", type=_positive_int, default=None, help="GHN propagation rounds")
    p.add_argument("--propagation", choices=("synchronous", "sequential"), default=None,
                   help="synchronous rounds (default) or GHN-2's sequential traversal "
                        "(the ablation baseline; slower)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: $NAS_DEVICE, "
                                                  "else cuda when available, else cpu)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes preparing steps ahead of the GHN (default: 0 on the CPU, "
                        "min(8, cores - 2) on a GPU)")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="continue the run that produced this GHN checkpoint (e.g. the bundled "
                        "one) in a new OUT: same settings, a larger --steps")
    p.add_argument("--restart", action="store_true", help="ignore an existing run in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train_ghn)


def _train_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError
    from nas_service.ghn.checkpoint import CheckpointError, resolve_device
    from nas_service.spaces import SearchSpaceError
    from nas_service.training.config import TrainingConfig
    from nas_service.training.ghn_training import start_from_checkpoint, train_ghn

    ghn = {k: getattr(args, k) for k in ("hidden", "layers", "propagation")
           if getattr(args, k) is not None}
    cfg = TrainingConfig(
        task=args.task, data_root=args.data_root,
        spaces=tuple(s.strip() for s in args.spaces.split(",") if s.strip()),
        steps=args.steps, meta_batch=args.meta_batch, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, max_parameters=args.max_parameters, max_flops=args.max_flops,
        seed=args.seed, validate_every=args.validate_every,
        validation_architectures=args.validation_architectures,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, ghn=ghn)
    workers = args.workers
    if workers is None:  # worth it only when the GHN's side of a step is not the CPU's too
        gpu = resolve_device(args.device).type != "cpu"
        workers = min(8, max(0, (os.cpu_count() or 1) - 2)) if gpu else 0
    try:
        if args.init_from is not None:
            if args.restart:
                raise ValueError("--init-from and --restart contradict each other")
            step = start_from_checkpoint(args.init_from, args.out, cfg)
            print(f"continuing {args.init_from} from step {step}")
        train_ghn(cfg, args.out, device=args.device, resume=not args.restart,
                  progress=not args.no_progress, workers=max(0, workers))
    except (DatasetError, SearchSpaceError, CheckpointError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"GHN written to {Path(args.out) / 'ghn.safetensors'}")
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate-ghn | rank-ghn
# ------------------------------------------------------------------------------------------------


def _add_ghn_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ghn", default=None, metavar="FILE",
                   help="GHN checkpoint (default: the bundled Fashion-MNIST GHN)")
    p.add_argument("--task", default="fashion-mnist", help="task name (default: %(default)s)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="the task's data folder")
    p.add_argument("--held-out", type=_positive_int, default=50,
                   help="held-out generated architectures (default: %(default)s)")
    p.add_argument("--sgd-epochs", type=float, default=1.0,
                   help="epochs of the SGD baseline; 0 skips it (default: %(default)s)")
    p.add_argument("--sgd-max-images", type=_positive_int, default=None,
                   help="cap on training images per SGD epoch (CPU budgets)")
    p.add_argument("--eval-images", type=_positive_int, default=None,
                   help="cap on images each score is measured on")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes result.json, report.md and scatter.png here")


def _add_evaluate_ghn(add_parser: AddParser) -> None:
    p = add_parser("evaluate-ghn", help="accuracy of predicted parameters on held-out networks",
                   description="Test accuracy of held-out generated architectures and of the "
                               "reference zoo with GHN-predicted parameters (batch-statistics "
                               "and recalibrated batch norm), random initialisation and SGD.")
    _add_ghn_source(p)
    p.add_argument("--no-zoo", action="store_true", help="skip the reference models")
    p.set_defaults(handler=_evaluate_ghn)


def _add_rank_ghn(add_parser: AddParser) -> None:
    p = add_parser("rank-ghn", help="how well cheap scores rank architectures (Kendall tau)",
                   description="Trains the held-out architectures with SGD (cached, resumable) "
                               "and compares each cheap score's ranking with theirs.")
    _add_ghn_source(p)
    p.add_argument("--epochs", type=float, default=5.0,
                   help="SGD epochs of the ground truth (default: %(default)s)")
    p.add_argument("--max-images", type=_positive_int, default=None,
                   help="cap on training images per ground-truth epoch")
    p.add_argument("--truth-eval-images", type=_positive_int, default=None,
                   help="cap on test images that score the ground truth")
    p.add_argument("--cache", default=None, metavar="FILE",
                   help="ground-truth cache (default: OUT/ground-truth.json)")
    p.add_argument("--cached-only", action="store_true",
                   help="rank only the architectures already trained in --cache")
    p.add_argument("--truth-only", action="store_true",
                   help="only train (fill the cache); no scores, no report")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="with --truth-only: train architectures i with i %% N == I, so N "
                        "processes sharing --cache split the work (default: 0/1)")
    p.set_defaults(handler=_rank_ghn)


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return index, count


def _ghn_for(args: argparse.Namespace):
    from nas_service.ghn.checkpoint import CheckpointError, load_ghn

    try:
        return load_ghn(args.ghn)
    except CheckpointError as e:
        raise CommandError(str(e)) from None


def _evaluate_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError
    from nas_service.training.evaluate import evaluate_ghn
    from nas_service.training.report import write_report

    ghn = _ghn_for(args)
    try:
        result = evaluate_ghn(ghn, args.task, held_out=args.held_out, zoo=not args.no_zoo,
                              sgd_epochs=args.sgd_epochs or None,
                              sgd_max_images=args.sgd_max_images, eval_images=args.eval_images, data_root=args.data_root,
                              progress=True)
    except DatasetError as e:
        raise CommandError(str(e)) from None
    paths = write_report(result, args.out)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _rank_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError
    from nas_service.ghn.checkpoint import bundled_checkpoint_path
    from nas_service.scoring.ranking_head import RankingHead, head_path_for
    from nas_service.scoring.scorer import file_sha256
    from nas_service.training.ranking import rank_surrogates, train_ground_truth
    from nas_service.training.report import write_report

    ghn = _ghn_for(args)
    cache = args.cache or Path(args.out) / "ground-truth.json"
    if args.shard != (0, 1) and not args.truth_only:
        raise CommandError("--shard needs --truth-only")
    try:
        if args.truth_only:
            summary = train_ground_truth(
                ghn, args.task, cache_path=cache, held_out=args.held_out, epochs=args.epochs,
                max_images=args.max_images, sgd_epochs_baseline=args.sgd_epochs or None,
                sgd_max_images=args.sgd_max_images, eval_images=args.eval_images,
                truth_eval_images=args.truth_eval_images, shard=args.shard,
                data_root=args.data_root, device=ghn.device)
            print(json.dumps(summary))
            return 0
        result = rank_surrogates(
            ghn, args.task, held_out=args.held_out, epochs=args.epochs,
            max_images=args.max_images, cache_path=cache,
            sgd_epochs_baseline=args.sgd_epochs or None, sgd_max_images=args.sgd_max_images,
            eval_images=args.eval_images, truth_eval_images=args.truth_eval_images,
            data_root=args.data_root, progress=True, cached_only=args.cached_only,
            ghn_sha256=file_sha256(args.ghn or bundled_checkpoint_path()))
    except (DatasetError, ValueError) as e:
        raise CommandError(str(e)) from None
    paths = write_report(result, args.out)
    if result.get("ranking_head"):
        paths["ranking_head"] = RankingHead.from_dict(result["ranking_head"]).save(
            Path(args.out) / "ranking-head.json")
        print(f"the service ranks by the head once it lies beside the checkpoint as "
              f"{head_path_for(args.ghn or bundled_checkpoint_path())}")
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


# ------------------------------------------------------------------------------------------------
# db upgrade | current
# ------------------------------------------------------------------------------------------------


def _add_db(add_parser: AddParser) -> None:
    p = add_parser("db", help="database schema: upgrade, current",
                   description="Manage the service database named by NAS_DATABASE_URL "
                               "(default: a SQLite file under NAS_DATA_DIR).")
    sub = p.add_subparsers(title="db commands", metavar="COMMAND", required=True)
    u = sub.add_parser("upgrade", help="apply migrations up to the newest revision")
    u.add_argument("--url", default=None, help="database URL (default: NAS_DATABASE_URL)")
    u.set_defaults(handler=_db_upgrade)
    c = sub.add_parser("current", help="print the database's revision and the code's")
    c.add_argument("--url", default=None, help="database URL (default: NAS_DATABASE_URL)")
    c.set_defaults(handler=_db_current)


def _database_url(args: argparse.Namespace) -> str:
    from pydantic import ValidationError

    from nas_service.settings import get_settings

    if args.url:
        return args.url
    try:
        return get_settings().database_url
    except ValidationError as e:
        raise CommandError(f"invalid settings: {e}") from None


def _db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.errors import StorageError

    try:
        before, after = migrate.upgrade(_database_url(args))
    except StorageError as e:
        raise CommandError(str(e)) from None
    except SQLAlchemyError as e:
        raise CommandError(f"cannot reach the database: {e.orig or e}") from None
    print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.engine import make_engine

    engine = make_engine(_database_url(args))
    try:
        print(f"database: {migrate.current_revision(engine) or 'not migrated'}")
        print(f"code:     {migrate.head_revision()}")
    except SQLAlchemyError as e:
        raise CommandError(f"cannot reach the database: {e.orig or e}") from None
    finally:
        engine.dispose()
    return 0


# ------------------------------------------------------------------------------------------------
# serve | worker
# ------------------------------------------------------------------------------------------------


def _add_serve(add_parser: AddParser) -> None:
    p = add_parser("serve", help="run the HTTP API (and, by default, one worker thread)",
                   description="Serve the /v1 API with uvicorn. Settings come from NAS_* "
                               "variables (docs/api.md). A SQLite database is migrated at "
                               "start-up; PostgreSQL must be migrated with `nas-service db "
                               "upgrade` (the container's entry point does).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--no-worker", action="store_true",
                   help="no in-process worker (run `nas-service worker` processes instead)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(handler=_serve)


def _add_worker(add_parser: AddParser) -> None:
    p = add_parser("worker", help="run search jobs from the database queue",
                   description="Claim search jobs from NAS_DATABASE_URL and run them with the "
                               "GHN, until SIGTERM or SIGINT (the current job is then released "
                               "to the queue).")
    p.add_argument("--once", action="store_true",
                   help="run at most one job, then exit (at once if none is queued)")
    p.add_argument("--id", default=None, metavar="NAME",
                   help="worker name in the job's lease (default: host:pid:random)")
    p.set_defaults(handler=_worker)


def _service_settings():
    from pydantic import ValidationError

    from nas_service.settings import get_settings

    try:
        return get_settings()
    except ValidationError as e:
        raise CommandError(f"invalid settings: {e}") from None


def _prepare_database(settings) -> None:
    """The embedded default migrates itself: one SQLite file, one machine, nobody else to do
    it. PostgreSQL is migrated explicitly (`nas-service db upgrade`, the container's entry
    point); serve and worker only check its schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db import migrate
    from nas_service.db.errors import StorageError

    if not settings.is_sqlite:
        return
    try:
        before, after = migrate.upgrade(settings.database_url)
    except (StorageError, SQLAlchemyError) as e:
        raise CommandError(f"cannot migrate {settings.database_url}: {e}") from None
    if before != after:
        print(f"database migrated to revision {after}", file=sys.stderr)


def _startup_errors():
    from sqlalchemy.exc import SQLAlchemyError

    from nas_service.db.errors import StorageError
    from nas_service.ghn.checkpoint import CheckpointError
    from nas_service.scoring.ranking_head import RankingHeadError

    return (StorageError, CheckpointError, RankingHeadError, SQLAlchemyError)


def _startup_failure(settings, error: Exception) -> CommandError:
    from nas_service.ghn.checkpoint import CheckpointError

    message = str(error)
    if isinstance(error, CheckpointError) and settings.ghn_path is None:
        message += (" (the bundled GHN is missing from this installation: set NAS_GHN_PATH to a "
                    "checkpoint written by `nas-service train-ghn`)")
    return CommandError(message)


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from nas_service.api import create_app

    settings = _service_settings()
    _prepare_database(settings)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings, run_worker=False if args.no_worker else None)
    except _startup_errors() as e:
        raise _startup_failure(settings, e) from None
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from nas_service.api import load_scorer
    from nas_service.db import make_engine, migrate
    from nas_service.search import CheckpointStore, Worker

    settings = _service_settings()
    _prepare_database(settings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(settings.database_url)
    try:
        migrate.check_schema(engine)
        scorer = load_scorer(settings)
    except _startup_errors() as e:
        engine.dispose()
        raise _startup_failure(settings, e) from None
    worker = Worker.from_settings(settings, engine, scorer,
                                  CheckpointStore(settings.checkpoint_dir), worker_id=args.id)
    # SIGTERM (docker stop, systemd) and SIGINT: finish the batch, release the job, exit 0.
    previous = {sig: signal.signal(sig, lambda *_: worker.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"worker {worker.worker_id} polling {settings.database_url.split('@')[-1]}",
          file=sys.stderr)
    try:
        worker.run(once=args.once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.dispose()
    return 0


# ------------------------------------------------------------------------------------------------
# Registry and entry point
# ------------------------------------------------------------------------------------------------

COMMANDS: tuple[Callable[[AddParser], None], ...] = (
    _add_info,
    _add_graph,
    _add_train_ghn,
    _add_evaluate_ghn,
    _add_rank_ghn,
    _add_db,
    _add_serve,
    _add_worker,
)
"""Every subcommand, in the order ``--help`` lists them. Register a new one here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Neural architecture search with graph hypernetworks.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub.add_parser)
    # Imported here: remote_cli imports this module (CommandError, the shared helpers).
    from nas_service.remote_cli import add_remote_commands  # predict, search, jobs, download

    add_remote_commands(sub.add_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit status (never raises for user mistakes)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from nas_service.runtime import retain_freed_memory

    retain_freed_memory()  # every command that predicts weights runs faster (see runtime.py)
    try:
        return handler(args)
    except CommandError as e:
        _err(f"{PROG}: error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `nas-service graph sample ... | head`
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
