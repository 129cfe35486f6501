"""GHN training (a few steps on the real Fashion-MNIST) and the library facade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from nas_service.data import TASKS, load_task
from nas_service.ghn import GraphHyperNetwork
from nas_service.ghn.checkpoint import load_ghn
from nas_service.graph import GraphBuilder, GraphNetwork, to_module
from nas_service.scoring.surrogate import predict_parameters, surrogate_accuracy
from nas_service.spaces import get_space
from nas_service.training.config import TrainingConfig
from nas_service.training.ghn_training import (
    _lr_at,
    meta_step,
    start_from_checkpoint,
    step_network,
    train_ghn,
)

pytestmark = pytest.mark.skipif(
    not Path(TASKS["fashion-mnist"].default_root).is_dir(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")

TINY_GHN = {"hidden": 16, "layers": 2, "code": 8, "block_out": 8, "block_in": 8, "vector": 8}


def tiny_config(steps: int) -> TrainingConfig:
    return TrainingConfig(steps=steps, meta_batch=2, batch_size=32, lr=3e-3, warmup_steps=2,
                          max_parameters=30_000, max_flops=1_500_000, validate_every=1000,
                          validation_architectures=2, checkpoint_every=4, log_every=4,
                          ghn=TINY_GHN)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_meta_steps_on_a_fixed_architecture_reduce_its_loss():
    torch.manual_seed(0)
    graph = get_space("macro").sample(3, max_parameters=30_000, max_flops=1_500_000)
    task = load_task("fashion-mnist")
    x, y = task.tensors("val")
    x, y = x[:64], y[:64]
    ghn = _tiny_ghn().train()
    opt = torch.optim.AdamW(ghn.parameters(), lr=1e-3)
    net = to_module(graph)
    losses = [meta_step(ghn, opt, [graph], [net], x, y, grad_clip=5.0)[0] for _ in range(40)]
    # A broken meta step leaves the ratio near 1; 40 working steps take it to about 0.75.
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5


def test_a_short_run_writes_a_loadable_checkpoint_and_log(tmp_path):
    torch.set_num_threads(1)
    train_ghn(tiny_config(8), tmp_path, progress=False, device="cpu")
    log = _log(tmp_path)
    assert [r["step"] for r in log if "loss" in r] == [4, 8]
    assert all(r["loss"] > 0 and 0 <= r["train_accuracy"] <= 1 for r in log if "loss" in r)
    assert any("val_accuracy" in r for r in log)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 8
    ghn = load_ghn(tmp_path / "ghn.safetensors", "cpu")
    assert ghn.training_record["step"] == 8 and ghn.task == "fashion-mnist"


class _Interrupted(Exception):
    pass


def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path):
    torch.set_num_threads(1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg = tiny_config(8)
    cfg.checkpoint_every = cfg.log_every = 2  # bookkeeping: trains the same
    train_ghn(cfg, straight, progress=False, device="cpu")
    train_ghn(tiny_config(4), resumed, progress=False, device="cpu")
    train_ghn(tiny_config(8), resumed, progress=False, device="cpu")  # steps may grow
    a = load_ghn(straight / "ghn.safetensors", "cpu").state_dict()
    b = load_ghn(resumed / "ghn.safetensors", "cpu").state_dict()
    # The LR schedule depends on the total number of steps, so the two runs differ after step 4
    # only through it; with the same total they must agree exactly: a run stopped after step 6
    # (last checkpoint: step 4) redoes steps 5 and 6 as they were, dropout masks included.

    def stop_after_step_6(record: dict) -> None:
        if record.get("step") == 6 and "loss" in record:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_ghn(cfg, tmp_path / "again", progress=False, device="cpu", on_log=stop_after_step_6)
    assert json.loads((tmp_path / "again" / "state.json").read_text())["step"] == 4
    train_ghn(cfg, tmp_path / "again", progress=False, device="cpu")
    c = load_ghn(tmp_path / "again" / "ghn.safetensors", "cpu").state_dict()
    for k in a:
        assert torch.equal(a[k], c[k]), k
    assert set(a) == set(b)


def test_resuming_with_other_settings_is_refused(tmp_path):
    torch.set_num_threads(1)
    train_ghn(tiny_config(4), tmp_path, progress=False, device="cpu")
    other = tiny_config(4)
    other.meta_batch = 3
    with pytest.raises(ValueError, match="meta_batch"):
        train_ghn(other, tmp_path, progress=False, device="cpu")


def test_worker_processes_prepare_exactly_the_steps_an_inline_run_does(tmp_path):
    torch.set_num_threads(1)
    train_ghn(tiny_config(4), tmp_path / "inline", progress=False, device="cpu", workers=0)
    train_ghn(tiny_config(4), tmp_path / "workers", progress=False, device="cpu", workers=2)
    a = load_ghn(tmp_path / "inline" / "ghn.safetensors", "cpu").state_dict()
    b = load_ghn(tmp_path / "workers" / "ghn.safetensors", "cpu").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_continues_from_a_checkpoint_with_a_fresh_optimizer_and_a_new_warm_up(tmp_path):
    torch.set_num_threads(1)
    train_ghn(tiny_config(4), tmp_path / "first", progress=False, device="cpu")
    checkpoint = tmp_path / "first" / "ghn.safetensors"
    other = tiny_config(8)
    other.batch_size = 16
    with pytest.raises(ValueError, match="batch_size"):
        start_from_checkpoint(checkpoint, tmp_path / "refused", other)
    assert not (tmp_path / "refused" / "state.json").exists()  # nothing half-written
    with pytest.raises(ValueError, match="more than that"):
        start_from_checkpoint(checkpoint, tmp_path / "refused", tiny_config(4))

    cfg = tiny_config(8)
    cfg.log_every = 1  # bookkeeping may change on resume
    assert start_from_checkpoint(checkpoint, tmp_path / "next", cfg) == 4
    with pytest.raises(ValueError, match="already holds a run"):
        start_from_checkpoint(checkpoint, tmp_path / "next", cfg)
    train_ghn(cfg, tmp_path / "next", progress=False, device="cpu")
    state = json.loads((tmp_path / "next" / "state.json").read_text())
    assert state["step"] == 8 and state["rewarm_from"] == 4
    assert state["initialized_from"] == str(checkpoint)
    lrs = [r["lr"] for r in _log(tmp_path / "next") if "lr" in r]
    # warmup_steps=2: half the scheduled rate at step 4, then the plain cosine schedule.
    assert lrs[0] == pytest.approx(_lr_at(4, cfg) / 2) and lrs[1] == pytest.approx(_lr_at(5, cfg))
    assert load_ghn(tmp_path / "next" / "ghn.safetensors", "cpu").training_record["step"] == 8


def test_a_warm_start_begins_a_new_run_with_its_own_settings_from_a_checkpoints_weights(tmp_path):
    torch.set_num_threads(1)
    train_ghn(tiny_config(4), tmp_path / "first", progress=False, device="cpu")
    checkpoint = tmp_path / "first" / "ghn.safetensors"
    weights = load_ghn(checkpoint, "cpu").state_dict()
    cfg = tiny_config(4)
    cfg.spaces = ("families[plain,mlp]",)  # what --init-from would refuse
    with pytest.raises(ValueError, match="GHN architecture"):
        train_ghn(cfg, tmp_path / "refused", progress=False, device="cpu", warm_start=checkpoint)
    cfg.ghn = {}
    seen = []
    train_ghn(cfg, tmp_path / "wide", progress=False, device="cpu", warm_start=checkpoint,
              on_log=seen.append)
    state = json.loads((tmp_path / "wide" / "state.json").read_text())
    assert state["step"] == 4 and state["config"]["spaces"] == ["families[plain,mlp]"]
    assert state["warm_started_from"] == str(checkpoint) and "rewarm_from" not in state
    assert [r["step"] for r in seen if "loss" in r] == [4]  # counted from step 0
    trained = load_ghn(tmp_path / "wide" / "ghn.safetensors", "cpu")
    assert trained.config.hidden == TINY_GHN["hidden"]  # the checkpoint's architecture
    assert any(not torch.equal(weights[k], v) for k, v in trained.state_dict().items())


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("space", ["cells", "macro", "families"])
def test_a_step_network_holds_no_tensor_and_computes_what_the_full_network_does(space):
    for seed in range(3):
        graph = get_space(space).sample(seed, max_parameters=300_000, max_flops=20_000_000)
        full = to_module(graph).train()
        params = {k: v.detach() for k, v in full.named_parameters()}
        x = torch.randn(4, *graph.input_shape)
        stateless = step_network(graph)
        assert not list(stateless.buffers())
        torch.manual_seed(1)  # the same dropout masks
        expected = functional_call(full, params, (x,))
        torch.manual_seed(1)
        assert torch.equal(functional_call(stateless.train(), params, (x,)), expected)


def test_predict_parameters_returns_the_users_module_ready_for_inference():
    ghn = _tiny_ghn()
    original = SmallNet()
    net = predict_parameters(original, ghn=ghn)
    assert type(net) is SmallNet and net is not original
    assert not net.training
    assert net.bn.num_batches_tracked.item() > 0  # statistics estimated on training batches
    assert not torch.allclose(net.bn.running_var, torch.ones(8))
    # The user's module is untouched and the copy carries the predicted weights.
    assert not torch.equal(net.conv.weight, original.conv.weight)
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_predict_parameters_of_a_graph_and_surrogate_accuracy():
    ghn = _tiny_ghn()
    b = GraphBuilder((1, 28, 28))
    x = b.add("relu", b.add("batch_norm", b.add("conv2d", b.input, out_channels=4,
                                                    kernel_size=3)))
    graph = b.build(b.add("linear", b.add("global_avg_pool", x), out_features=10), 10)
    net = predict_parameters(graph, ghn=ghn)
    assert isinstance(net, GraphNetwork) and not net.training
    score = surrogate_accuracy(graph, ghn=ghn)
    assert 0.0 <= score <= 1.0


def _tiny_ghn() -> GraphHyperNetwork:
    from nas_service.ghn import GHNConfig

    torch.manual_seed(0)
    return GraphHyperNetwork(GHNConfig(**TINY_GHN)).eval()
