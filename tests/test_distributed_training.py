"""GHN training in several processes (``torchrun``, gloo on CPUs) computes what one process does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from nas_service.training.distributed import GradientSum, Ranks

# The GHN stack is imported where it is used: the processes the gradient test spawns import
# this module, and need only torch.

# A tiny run the command line can express. Its first steps must have networks that are not badly
# conditioned: summing gradients in another order changes them by ~1e-7, which a network
# normalising a nearly constant channel can amplify 10^5-fold, and that would say nothing about
# the distributed code. Which seeds qualify depends on the GHN's initialisation (its op
# vocabulary, its tiling); seed 3 does for the current one (seed 2 fails that way by 6e-5 in
# one weight, with plain tiling as well). --grad-clip 1000 keeps clipping off, so the
# optimizer's moments are the summed gradients themselves: a sum off by a factor shows.
TINY_RUN = ["--seed", "3", "--grad-clip", "1000", "--meta-batch", "3", "--batch-size", "32",
            "--lr", "3e-3", "--warmup-steps", "2", "--max-parameters", "30000",
            "--max-flops", "1500000", "--validate-every", "1000",
            "--validation-architectures", "2", "--checkpoint-every", "4", "--log-every", "1",
            "--hidden", "16", "--layers", "2", "--device", "cpu", "--no-progress"]


def _train(out: Path, steps: int) -> None:
    from nas_service.commands import main

    assert main(["train-ghn", "--out", str(out), "--steps", str(steps), *TINY_RUN]) == 0


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "each step logged once (by rank 0 only)"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *,
                  rtol: float) -> None:
    """Every tensor of ``b`` within ``rtol`` of its counterpart's largest magnitude."""
    assert a.keys() == b.keys()
    for k in a:
        scale = a[k].abs().max().item()
        assert (a[k] - b[k]).abs().max().item() <= rtol * scale + 1e-8, k


def _fashion_mnist_installed() -> bool:
    from nas_service.data import TASKS

    return Path(TASKS["fashion-mnist"].default_root).is_dir()


@pytest.mark.skipif(not _fashion_mnist_installed(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_two_gloo_processes_resume_a_run_exactly_as_one_process_continues_it(tmp_path):
    """Steps 0-1 in one process, then steps 2-3 either in one process or in two torchrun
    processes (rank 0: architectures 0 and 2, rank 1: architecture 1): the same weights,
    optimizer moments and losses, and rank 1 wrote nothing."""
    torch.set_num_threads(1)
    single, split = tmp_path / "single", tmp_path / "split"
    _train(single, 2)
    shutil.copytree(single, split)
    _train(single, 4)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nas_service", "train-ghn", "--out", str(split), "--steps", "4", *TINY_RUN],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("GHN written to") == 1

    assert json.loads((split / "state.json").read_text())["step"] == 4
    # Summed over two ranks, the gradients add in another order: the optimizer's moments agree
    # to about 1e-6 of their scale. Adam divides by the root of the second moment, so a weight
    # whose gradient is near zero turns that rounding into up to about 1e-4 of the tensor's
    # scale (measured: one element of `block_head.weight`); a lost or doubled gradient would be
    # off by the learning rate, 3e-3, on most elements.
    _assert_close(load_file(single / "ghn.safetensors"), load_file(split / "ghn.safetensors"),
                  rtol=1e-3)
    _assert_close(load_file(single / "optimizer.safetensors"),
                  load_file(split / "optimizer.safetensors"), rtol=1e-4)
    expected = _losses(single)
    assert sorted(_losses(split)) == [1, 2, 3, 4]
    assert _losses(split) == pytest.approx(expected, rel=1e-5)


def _sum_on_two_ranks(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        both, one, neither = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
        both.grad = torch.full((2,), rank + 1.0)
        if rank == 1:
            one.grad = torch.tensor([5.0, 6.0])
        totals = GradientSum()([both, one, neither], torch.tensor([rank + 1.0, 10.0]))
        torch.save({"both": both.grad, "one": one.grad, "neither": neither.grad,
                    "totals": totals}, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_summed_over_ranks_and_a_parameter_no_rank_used_keeps_none(tmp_path):
    mp.spawn(_sum_on_two_ranks, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(got["both"], torch.tensor([3.0, 3.0]))
        assert torch.equal(got["one"], torch.tensor([5.0, 6.0]))  # zeros stood in on rank 0
        assert got["neither"] is None  # the optimizer skips it, as in one process
        assert torch.equal(got["totals"], torch.tensor([3.0, 20.0]))


def test_a_rank_takes_every_world_size_th_architecture_of_the_meta_batch():
    batch = list(range(8))
    assert Ranks(0, 3).share(batch) == [0, 3, 6] and Ranks(2, 3).share(batch) == [2, 5]
    assert sorted(sum((Ranks(r, 3).share(batch) for r in range(3)), [])) == batch
    assert Ranks().share(batch) == batch and Ranks().main and not Ranks(1, 2).main


@pytest.mark.skipif(not _fashion_mnist_installed(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_plain_tiling_is_recorded_in_the_trained_checkpoint(tmp_path):
    """--plain-tiling trains GHN-2's tiling; the checkpoint says so, and loads with it."""
    from nas_service.commands import main
    from nas_service.ghn.checkpoint import load_ghn

    for flags, expected in (([], True), (["--plain-tiling"], False)):
        out = tmp_path / str(expected)
        assert main(["train-ghn", "--out", str(out), "--steps", "1", *TINY_RUN, *flags]) == 0
        assert load_ghn(out / "ghn.safetensors", "cpu").config.tile_signs is expected
