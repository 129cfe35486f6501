"""``nas-service train-ghn | evaluate-ghn | rank-ghn``: training a graph hypernetwork and
measuring its predicted weights and rankings (docs/ghn.md, docs/evaluation.md);
``nas-service continual-bench``: continual learning with task-conditioned hypernetworks on
Fashion-MNIST (docs/continual.md); ``nas-service train-char-lm``: training one character
language model (docs/sequence.md).

The training and evaluation stack (torch-geometric, the data layer) is imported inside the
handlers; only ``train-ghn``'s defaults (``TrainingConfig``) are read when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from nas_service.commands.arguments import AddParser, positive_int
from nas_service.commands.errors import CommandError

# ------------------------------------------------------------------------------------------------
# train-ghn
# ------------------------------------------------------------------------------------------------


def add_train_ghn(add_parser: AddParser) -> None:
    from dataclasses import fields

    from nas_service.training.config import TrainingConfig

    defaults = {f.name: f.default for f in fields(TrainingConfig) if f.name != "ghn"}
    p = add_parser("train-ghn", help="train a graph hypernetwork (resumable)",
                   description="Train a GHN with meta-batches of sampled architectures. Every "
                               "random choice derives from --seed and the step, so a run "
                               "resumed from OUT continues exactly where it stopped. OUT holds "
                               "ghn.safetensors, optimizer.safetensors, state.json, log.jsonl. "
                               "Under torchrun (torchrun --nproc_per_node N -m nas_service "
                               "train-ghn ...) N processes train one GHN, each on its share of "
                               "every meta-batch (one GPU each, or gloo on CPUs).")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (resumed if present)")
    p.add_argument("--task", default=defaults["task"], help="task name (default: %(default)s)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="the task's data folder")
    p.add_argument("--spaces", default=None,
                   help="comma-separated search spaces, e.g. cells,families[-vit,-mlp] "
                        f"(default: {','.join(defaults['spaces'])}; charlm for a character "
                        "task such as gcide-chars, which trains on language models: one "
                        "process, no resume)")
    for name in ("steps", "meta_batch", "batch_size", "warmup_steps", "max_parameters",
                 "max_flops", "validate_every", "validation_architectures",
                 "checkpoint_every", "log_every"):
        p.add_argument("--" + name.replace("_", "-"), type=positive_int, default=defaults[name],
                       help="default: %(default)s")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="default: %(default)s")
    for name in ("lr", "weight_decay", "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=defaults[name],
                       help="default: %(default)s")
    p.add_argument("--hidden", type=positive_int, default=None, help="GHN width")
    p.add_argument("--layers", type=positive_int, default=None, help="GHN propagation rounds")
    p.add_argument("--plain-tiling", action="store_true",
                   help="tile wide tensors with copies of the predicted block, as GHN-2 does, "
                        "instead of decorrelated tiles (GHNConfig.tile_signs; ghn.md)")
    p.add_argument("--propagation", choices=("synchronous", "sequential"), default=None,
                   help="synchronous rounds (default) or GHN-2's sequential traversal "
                        "(the ablation baseline; slower)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: $NAS_DEVICE, "
                                                  "else cuda when available, else cpu; under "
                                                  "torchrun, cuda means cuda:$LOCAL_RANK)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes preparing steps ahead of the GHN, per training process "
                        "(default: 0 on the CPU, min(8, (cores - 2) / processes on the "
                        "machine) on a GPU)")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="continue the run that produced this GHN checkpoint (e.g. the bundled "
                        "one) in a new OUT: same settings, a larger --steps")
    p.add_argument("--warm-start", default=None, metavar="FILE",
                   help="start a new run in OUT (its own settings, e.g. other --spaces, from "
                        "step 0) from this GHN checkpoint's weights")
    p.add_argument("--restart", action="store_true", help="ignore an existing run in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train_ghn)


def _train_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError, get_task
    from nas_service.ghn.checkpoint import CheckpointError, resolve_device
    from nas_service.spaces import SearchSpaceError, split_space_names
    from nas_service.training.config import TrainingConfig
    from nas_service.training.distributed import training_processes
    from nas_service.training.ghn_training import start_from_checkpoint, train_ghn

    ghn = {k: getattr(args, k) for k in ("hidden", "layers", "propagation")
           if getattr(args, k) is not None}
    if args.plain_tiling:
        ghn["tile_signs"] = False
    try:
        language_model = get_task(args.task).is_language_model
    except DatasetError as e:
        raise CommandError(str(e)) from None
    spaces = args.spaces or ("charlm" if language_model else ",".join(TrainingConfig.spaces))
    cfg = TrainingConfig(
        task=args.task, data_root=args.data_root,
        spaces=split_space_names(spaces),
        steps=args.steps, meta_batch=args.meta_batch, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, max_parameters=args.max_parameters, max_flops=args.max_flops,
        seed=args.seed, validate_every=args.validate_every,
        validation_architectures=args.validation_architectures,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, ghn=ghn)
    workers = args.workers
    if workers is None:  # worth it only when the GHN's side of a step is not the CPU's too
        gpu = resolve_device(args.device).type != "cpu"
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
        workers = min(8, max(0, (os.cpu_count() or 1) - 2) // per_machine) if gpu else 0
    if language_model:
        return _train_char_ghn(args, cfg)
    if args.init_from is not None and args.restart:
        raise CommandError("--init-from and --restart contradict each other")
    if args.init_from is not None and args.warm_start is not None:
        raise CommandError("--init-from continues a run, --warm-start starts one: give one of them")
    try:
        with training_processes(args.device) as (ranks, device):
            if args.init_from is not None and ranks.main:
                step = start_from_checkpoint(args.init_from, args.out, cfg)
                print(f"continuing {args.init_from} from step {step}")
            train_ghn(cfg, args.out, device=device, resume=not args.restart,
                      progress=not args.no_progress, workers=max(0, workers),
                      warm_start=args.warm_start)
    except (DatasetError, SearchSpaceError, CheckpointError, ValueError) as e:
        raise CommandError(str(e)) from None
    if ranks.main:
        print(f"GHN written to {Path(args.out) / 'ghn.safetensors'}")
    return 0


def _train_char_ghn(args: argparse.Namespace, cfg: Any) -> int:
    """A character task: :mod:`nas_service.training.char_ghn` (one process, a fresh run)."""
    from nas_service.data import DatasetError
    from nas_service.ghn.checkpoint import CheckpointError
    from nas_service.spaces import SearchSpaceError
    from nas_service.training.char_ghn import train_char_ghn

    unsupported = [flag for flag, value in (("--init-from", args.init_from),
                                            ("--warm-start", args.warm_start),
                                            ("--workers", args.workers)) if value is not None]
    if unsupported or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CommandError(f"{cfg.task} trains in one process from scratch: "
                           f"{', '.join(unsupported) or 'torchrun'} is not supported")
    try:
        train_char_ghn(cfg, args.out, device=args.device, progress=not args.no_progress)
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
    p.add_argument("--held-out", type=positive_int, default=50,
                   help="held-out generated architectures (default: %(default)s)")
    p.add_argument("--spaces", default=None,
                   help="comma-separated spaces the held-out architectures come from (default: "
                        "the spaces the GHN was trained on), e.g. cells,macro to compare GHNs "
                        "trained on different spaces on one set")
    p.add_argument("--sgd-epochs", type=float, default=1.0,
                   help="epochs of the SGD baseline; 0 skips it (default: %(default)s)")
    p.add_argument("--sgd-max-images", type=positive_int, default=None,
                   help="cap on training images per SGD epoch (CPU budgets)")
    p.add_argument("--eval-images", type=positive_int, default=None,
                   help="cap on images each score is measured on")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes result.json, report.md and scatter.png here")


def add_evaluate_ghn(add_parser: AddParser) -> None:
    p = add_parser("evaluate-ghn", help="accuracy of predicted parameters on held-out networks",
                   description="Test accuracy of held-out generated architectures and of the "
                               "reference zoo with GHN-predicted parameters (batch-statistics "
                               "and recalibrated batch norm), random initialisation and SGD.")
    _add_ghn_source(p)
    p.add_argument("--no-zoo", action="store_true", help="skip the reference models")
    p.set_defaults(handler=_evaluate_ghn)


def add_rank_ghn(add_parser: AddParser) -> None:
    p = add_parser("rank-ghn", help="how well cheap scores rank architectures (Kendall tau)",
                   description="Trains the held-out architectures with SGD (cached, resumable) "
                               "and compares each cheap score's ranking with theirs.")
    _add_ghn_source(p)
    p.add_argument("--epochs", type=float, default=5.0,
                   help="SGD epochs of the ground truth (default: %(default)s)")
    p.add_argument("--max-images", type=positive_int, default=None,
                   help="cap on training images per ground-truth epoch")
    p.add_argument("--truth-eval-images", type=positive_int, default=None,
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


def _held_out_spaces(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--spaces`` checked (unknown spaces are a clear error), or ``None``."""
    from nas_service.spaces import SearchSpaceError, get_space, split_space_names

    if args.spaces is None:
        return None
    try:
        spaces = split_space_names(args.spaces)
        for name in spaces:
            get_space(name)
    except SearchSpaceError as e:
        raise CommandError(f"--spaces: {e}") from None
    return spaces


def _evaluate_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError
    from nas_service.training.evaluate import evaluate_ghn
    from nas_service.training.report import write_report

    ghn = _ghn_for(args)
    try:
        result = evaluate_ghn(ghn, args.task, held_out=args.held_out, zoo=not args.no_zoo,
                              sgd_epochs=args.sgd_epochs or None,
                              sgd_max_images=args.sgd_max_images, eval_images=args.eval_images,
                              data_root=args.data_root, progress=True,
                              spaces=_held_out_spaces(args))
    except DatasetError as e:
        raise CommandError(str(e)) from None
    paths = write_report(result, args.out)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _rank_ghn(args: argparse.Namespace) -> int:
    from nas_service.data import DatasetError
    from nas_service.ghn.checkpoint import bundled_checkpoint_path
    from nas_service.scoring.protocol import READOUT, score_name
    from nas_service.scoring.ranking_head import RankingHead, head_for_checkpoint, head_path_for
    from nas_service.scoring.scorer import file_sha256
    from nas_service.training.ranking import rank_surrogates, train_ground_truth
    from nas_service.training.report import write_report

    ghn = _ghn_for(args)
    checkpoint = args.ghn or bundled_checkpoint_path()
    sha256 = file_sha256(checkpoint)
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
                data_root=args.data_root, device=ghn.device, spaces=_held_out_spaces(args))
            print(json.dumps(summary))
            return 0
        result = rank_surrogates(
            ghn, args.task, held_out=args.held_out, epochs=args.epochs,
            max_images=args.max_images, cache_path=cache,
            sgd_epochs_baseline=args.sgd_epochs or None, sgd_max_images=args.sgd_max_images,
            eval_images=args.eval_images, truth_eval_images=args.truth_eval_images,
            data_root=args.data_root, progress=True, cached_only=args.cached_only,
            ghn_sha256=sha256, spaces=_held_out_spaces(args),
            served_head=head_for_checkpoint(checkpoint, sha256, score_name(READOUT)))
    except (DatasetError, ValueError) as e:
        raise CommandError(str(e)) from None
    paths = write_report(result, args.out)
    if result.get("ranking_head"):
        paths["ranking_head"] = RankingHead.from_dict(result["ranking_head"]).save(
            Path(args.out) / "ranking-head.json")
        print(f"the service ranks by the head once it lies beside the checkpoint as "
              f"{head_path_for(checkpoint)}")
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


# ------------------------------------------------------------------------------------------------
# continual-bench
# ------------------------------------------------------------------------------------------------


def add_continual_bench(add_parser: AddParser) -> None:
    p = add_parser("continual-bench",
                   help="continual learning on Fashion-MNIST: hypernetworks against baselines",
                   description="Learn Split Fashion-MNIST (5 tasks of 2 classes; split-cnn: "
                               "with a small CNN) and/or Permuted Fashion-MNIST (10 tasks) one "
                               "task after another with a "
                               "task-conditioned hypernetwork and with the baselines (fine-"
                               "tuning, EWC, online EWC, SI, multi-task training), and print "
                               "each method's average accuracy after the last task, forgetting, "
                               "task 1's accuracy after each task and its trainable parameters "
                               "(docs/continual.md). bench/continual_bench.py runs the same "
                               "definitions and records them.")
    p.add_argument("--benchmark", choices=("split", "permuted", "split-cnn", "all"),
                   default="all", help="default: %(default)s")
    p.add_argument("--methods", default=None, metavar="A,B",
                   help="comma-separated subset, e.g. hnet-chunked,finetune (default: all)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="Adam steps per task (default: 600, split-cnn 300)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--quick", action="store_true",
                   help="3 permuted tasks and 500 test images per task (a smoke run)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="Fashion-MNIST's folder")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_continual_bench)


def _continual_bench(args: argparse.Namespace) -> int:
    import torch

    from nas_service.commands.output import table
    from nas_service.continual import (
        BENCHMARKS,
        DEFAULT_STEPS,
        ContinualError,
        TrainingSettings,
        benchmark_methods,
        benchmark_tasks,
        run_method,
    )
    from nas_service.data import DatasetError, load_task

    benchmarks = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    wanted = None if args.methods is None else [m.strip() for m in args.methods.split(",")
                                                if m.strip()]
    known = {m for b in benchmarks for m in benchmark_methods(b)}
    if wanted is not None:
        unknown = sorted(set(wanted) - known)
        if unknown or not wanted:
            raise CommandError(f"--methods: unknown {', '.join(unknown) or 'empty list'}; "
                               f"known: {', '.join(sorted(known))}")
    try:
        data = load_task("fashion-mnist", args.data_root)
    except DatasetError as e:
        raise CommandError(str(e)) from None
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    results: dict[str, dict[str, dict]] = {}
    for benchmark in benchmarks:
        settings = TrainingSettings(steps=args.steps or DEFAULT_STEPS[benchmark], seed=args.seed)
        tasks = benchmark_tasks(benchmark, data, quick=args.quick)
        methods = [m for m in benchmark_methods(benchmark) if wanted is None or m in wanted]
        results[benchmark] = {}
        for method in methods:
            try:
                results[benchmark][method] = run_method(benchmark, method, tasks, settings,
                                                        progress=not args.no_progress)
            except ContinualError as e:
                raise CommandError(str(e)) from None
        rows = []
        for method, r in results[benchmark].items():
            p = r["parameters"]
            count = int(p.get("network", p.get("hypernetwork", 0) + p.get("task_embeddings", 0)))
            rows.append((method, f"{r['average_accuracy']:.2f}", r.get("forgetting"),
                         r.get("task1_forgetting"), r.get("task_inferred_accuracy"),
                         f"{count:,}", f"{p['compression']:.2f}" if "compression" in p else None))
        print(f"{benchmark}: {len(tasks)} tasks, {settings.steps} steps per task, accuracy in %")
        print(table(["method", "average", "forgetting", "task-1 forgetting", "task inferred",
                     "trainable", "ratio"], rows, right=(1, 2, 3, 4, 5, 6)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------
# train-char-lm
# ------------------------------------------------------------------------------------------------


def add_train_char_lm(add_parser: AddParser) -> None:
    from nas_service.training.char_lm import CharLMSettings

    d = CharLMSettings()
    p = add_parser("train-char-lm", help="train a character-level language model, report bpc",
                   description="Train an LSTM, RHN, HyperLSTM or hyper-RHN character language "
                               "model with truncated BPTT on the GCIDE corpus (Debian's "
                               "dict-gcide) or a text file, then report bits per character on "
                               "the validation and test splits (docs/sequence.md).")
    p.add_argument("--kind", choices=("lstm", "rhn", "hyper-lstm", "hyper-rhn"), default=d.kind,
                   help="default: %(default)s")
    p.add_argument("--parameters", type=positive_int, default=d.parameters,
                   help="parameter budget: the widest model within it (default: %(default)s)")
    p.add_argument("--hidden", type=positive_int, default=None,
                   help="hidden size (instead of --parameters)")
    for name in ("num_layers", "depth", "hyper_size", "embedding_size", "steps", "batch_size",
                 "bptt", "min_count"):
        p.add_argument("--" + name.replace("_", "-"), type=positive_int,
                       default=getattr(d, name), help="default: %(default)s")
    for name in ("dropout", "recurrent_dropout", "lr", "clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help="default: %(default)s")
    p.add_argument("--layer-norm", action="store_true", help="layer norm in the custom cells")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this wall-clock time, even before --steps")
    p.add_argument("--eval-chars", type=int, default=d.eval_chars,
                   help="characters of each of val and test scored; 0: all "
                        "(default: %(default)s)")
    p.add_argument("--corpus", default=None, metavar="FILE",
                   help="a UTF-8 text file (default: /usr/share/dictd/gcide.dict.dz)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write char-lm.safetensors and result.json here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train_char_lm)


def _train_char_lm(args: argparse.Namespace) -> int:
    import torch

    from nas_service.data import DatasetError
    from nas_service.training.char_lm import CharLMSettings, train_char_lm

    if args.minutes is not None and args.minutes <= 0:
        raise CommandError(f"--minutes must be positive, got {args.minutes}")
    torch.set_num_threads(args.threads)
    try:
        settings = CharLMSettings(
            kind=args.kind, hidden_size=args.hidden, parameters=args.parameters,
            num_layers=args.num_layers, depth=args.depth, hyper_size=args.hyper_size,
            embedding_size=args.embedding_size, dropout=args.dropout,
            recurrent_dropout=args.recurrent_dropout, layer_norm=args.layer_norm,
            corpus=args.corpus, min_count=args.min_count, steps=args.steps,
            max_seconds=None if args.minutes is None else args.minutes * 60,
            batch_size=args.batch_size, bptt=args.bptt, lr=args.lr, clip=args.clip,
            eval_chars=args.eval_chars or None, seed=args.seed)
        result = train_char_lm(settings, args.out, progress=not args.no_progress)
    except (DatasetError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"{result['model']['kind']}, {result['parameters']:,} parameters, "
          f"{result['steps']} steps ({result['train_characters']:,} characters, "
          f"{result['train_tokens_per_s']:.0f}/s): validation {result['val_bpc']:.3f} bpc, "
          f"test {result['test_bpc']:.3f} bpc")
    if args.out is not None:
        print(f"wrote {Path(args.out) / 'char-lm.safetensors'} and "
              f"{Path(args.out) / 'result.json'}")
    return 0
