"""Continual learning with task-conditioned hypernetworks: generated weights, the output
regulariser, the baselines' penalties, the task sequences, and that the method keeps an earlier
task where fine-tuning loses it (tiny synthetic tasks, a few seconds in all)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_files import write_idx_task
from torch.func import functional_call

from nas_service.continual import (
    EWC,
    ChunkedHyperMLP,
    ContinualError,
    ContinualLearner,
    ContinualTask,
    HyperMLP,
    HypernetworkLearner,
    OnlineEWC,
    RegularizedLearner,
    SequenceResult,
    SynapticIntelligence,
    TargetCNN,
    TargetMLP,
    TrainingSettings,
    diagonal_fisher,
    output_regularizer,
    parameter_shapes,
    permuted_tasks,
    pixel_permutations,
    run_multitask,
    run_sequence,
    snapshot_outputs,
    split_tasks,
    task_inferred_accuracy,
)
from nas_service.data import clear_cache, load_task

SHAPE = (1, 4, 4)  # 16 "pixels": tiny synthetic images


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: a second thread only adds contention on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _teacher_task(name: str, seed: int, n_train: int = 600, n_test: int = 400, *,
                  flipped: bool = False) -> ContinualTask:
    """Two classes given by a random 2-layer teacher on 16-dim Gaussian inputs; ``flipped``
    swaps the labels (the same images, the opposite answers: a task that conflicts with the
    unflipped one as much as a task can)."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(16, 8, generator=g), torch.randn(8, generator=g)

    def labelled(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *SHAPE, generator=g)
        score = torch.relu(x.flatten(1) @ w1) @ w2
        y = (score > score.median()).long()
        return x, 1 - y if flipped else y

    (xtr, ytr), (xte, yte) = labelled(n_train), labelled(n_test)
    return ContinualTask(name, 2, xtr, ytr, xte, yte, (0, 1))


@pytest.mark.parametrize("make_target", [
    lambda: TargetMLP((1, 28, 28), 10, hidden=(20, 10)),
    lambda: TargetCNN((1, 28, 28), 10, channels=(4, 8), features=16),
], ids=["mlp", "cnn"])
@pytest.mark.parametrize("make_hnet", [
    lambda shapes: HyperMLP(shapes, embedding_dim=8, hidden=(16,)),
    lambda shapes: ChunkedHyperMLP(shapes, chunk_size=333, embedding_dim=8,
                                   chunk_embedding_dim=4, hidden=(16,)),
], ids=["full", "chunked"])
def test_generated_weights_have_the_target_shapes_and_run_the_target(make_target, make_hnet):
    target = make_target()
    hnet = make_hnet(parameter_shapes(target))
    for _ in range(3):
        hnet.add_task()
    weights = hnet.weights(1)
    assert {n: w.shape for n, w in weights.items()} == parameter_shapes(target)
    logits = functional_call(target, weights, (torch.randn(5, 1, 28, 28),))
    assert logits.shape == (5, 10)
    # All tasks in one batched pass give each task's weights.
    flat = hnet(hnet.embeddings([0, 1, 2]))
    assert flat.shape == (3, hnet.layout.numel)
    torch.testing.assert_close(hnet.layout.unflatten(flat[1]), weights)
    # Different tasks get different weights.
    assert not torch.equal(flat[0], flat[2])


def test_chunked_hypernetwork_is_smaller_than_its_target():
    target = TargetMLP((1, 28, 28), 2)
    counts = ChunkedHyperMLP(parameter_shapes(target)).parameter_count()
    assert counts["target"] == sum(p.numel() for p in target.parameters())
    assert counts["compression"] < 1
    assert HyperMLP(parameter_shapes(target)).parameter_count()["compression"] > 1


def test_regularizer_is_zero_for_an_unchanged_hypernetwork_and_positive_after_a_change():
    target = TargetMLP(SHAPE, 2, hidden=(8,))
    hnet = ChunkedHyperMLP(parameter_shapes(target), chunk_size=50, hidden=(16,))
    for _ in range(3):
        hnet.add_task()
    earlier = [0, 1]
    targets = snapshot_outputs(hnet, earlier)
    assert output_regularizer(hnet, earlier, targets, beta=0.01).item() == 0.0
    with torch.no_grad():
        hnet.net[0].weight.add_(0.1)
    after = output_regularizer(hnet, earlier, targets, beta=0.01)
    assert after.item() > 0
    # β scales it and it averages over the earlier tasks.
    assert output_regularizer(hnet, earlier, targets, beta=0.02).item() == pytest.approx(
        2 * after.item())
    assert output_regularizer(hnet, [], targets[:0], beta=0.01).item() == 0.0
    # Its gradient reaches Θ but never the frozen earlier embeddings.
    after.backward()
    assert hnet.net[0].weight.grad is not None and hnet.net[0].weight.grad.abs().sum() > 0
    assert all(hnet.task_embeddings[t].grad is None for t in earlier)


def _task1_after_two_tasks(learner: ContinualLearner, tasks: list[ContinualTask]) -> tuple[
        float, float]:
    result = run_sequence(learner, tasks, TrainingSettings(steps=150, batch_size=64, lr=3e-3))
    return result.accuracy[0][0], result.accuracy[1][0]


def _conflicting_tasks() -> list[ContinualTask]:
    return [_teacher_task("a", 1), _teacher_task("b", 1, flipped=True)]


def test_hypernetwork_keeps_task_1_where_fine_tuning_forgets_it():
    tasks = _conflicting_tasks()
    torch.manual_seed(0)
    finetune = RegularizedLearner(TargetMLP(SHAPE, 2, hidden=(12,)), shared_head=True)
    ft_before, ft_after = _task1_after_two_tasks(finetune, tasks)
    torch.manual_seed(0)
    target = TargetMLP(SHAPE, 2, hidden=(12,))
    hnet = HyperMLP(parameter_shapes(target), embedding_dim=8, hidden=(32,))
    hn_before, hn_after = _task1_after_two_tasks(HypernetworkLearner(hnet, target, beta=0.1),
                                                 tasks)
    assert ft_before > 0.75 and hn_before > 0.75  # both learned task 1
    assert ft_before - ft_after > 0.1  # fine-tuning forgot it
    assert hn_before - hn_after < 0.03  # the regulariser kept it
    assert hn_after > ft_after + 0.1


def test_the_regulariser_keeps_task_1_weights_where_beta_zero_lets_them_drift():
    tasks = _conflicting_tasks()
    settings = TrainingSettings(steps=150, batch_size=64, lr=3e-3)
    drift = {}
    for beta in (0.0, 0.1):
        torch.manual_seed(0)
        target = TargetMLP(SHAPE, 2, hidden=(12,))
        learner = HypernetworkLearner(
            HyperMLP(parameter_shapes(target), embedding_dim=8, hidden=(32,)), target, beta)
        generator = torch.Generator().manual_seed(0)
        learner.learn(0, tasks[0], settings, generator)
        after_task_1 = snapshot_outputs(learner.hnet, [0])
        learner.learn(1, tasks[1], settings, generator)
        drift[beta] = float((snapshot_outputs(learner.hnet, [0]) - after_task_1).norm())
    assert drift[0.1] < 0.5 * drift[0.0]


@pytest.mark.parametrize("make_penalty", [lambda: EWC(100.0, fisher_samples=64),
                                          lambda: OnlineEWC(100.0, fisher_samples=64),
                                          lambda: SynapticIntelligence(1.0)],
                         ids=["ewc", "online-ewc", "si"])
def test_penalty_is_zero_at_its_anchor_and_pulls_back_towards_it(make_penalty):
    task = _teacher_task("a", 1)
    torch.manual_seed(0)
    model = TargetMLP(SHAPE, 2, hidden=(12,), heads=2)
    penalty = make_penalty()
    learner = RegularizedLearner(model, penalty)
    assert float(penalty.loss(model)) == 0.0  # nothing learned yet
    learner.learn(0, task, TrainingSettings(steps=60, batch_size=32), torch.Generator())
    assert penalty.loss(model).item() == pytest.approx(0.0, abs=1e-12)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = penalty.loss(model)
    assert loss.item() > 0
    loss.backward()
    # Its gradient points away from the anchor: a step down it moves back towards the anchor.
    towards = sum(float((p.grad * (p.detach() - anchor[n])).sum())
                  for n, p in model.named_parameters() if p.grad is not None)
    assert towards > 0


def test_fisher_is_non_negative_has_the_parameter_shapes_and_ignores_other_heads():
    task = _teacher_task("a", 1)
    model = TargetMLP(SHAPE, 2, hidden=(12,), heads=2)
    fisher = diagonal_fisher(model, 0, task, 50, torch.Generator().manual_seed(0))
    assert {n: f.shape for n, f in fisher.items()} == parameter_shapes(model)
    assert all(bool((f >= 0).all()) for f in fisher.values())
    assert fisher["heads.0.weight"].sum() > 0 and fisher["heads.1.weight"].sum() == 0


def test_ewc_reduces_forgetting_compared_with_fine_tuning():
    tasks = [_teacher_task("a", 1), _teacher_task("b", 2, flipped=True)]
    torch.manual_seed(0)
    _, ft_after = _task1_after_two_tasks(
        RegularizedLearner(TargetMLP(SHAPE, 2, hidden=(12,)), shared_head=True), tasks)
    torch.manual_seed(0)
    _, ewc_after = _task1_after_two_tasks(
        RegularizedLearner(TargetMLP(SHAPE, 2, hidden=(12,)), EWC(1000.0, fisher_samples=200),
                           shared_head=True), tasks)
    assert ewc_after > ft_after + 0.05


def test_multitask_training_learns_every_task():
    tasks = [_teacher_task("a", 1), _teacher_task("b", 2)]
    torch.manual_seed(0)
    result, learner = run_multitask(TargetMLP(SHAPE, 2, hidden=(12,), heads=2), tasks,
                                    TrainingSettings(steps=150, batch_size=64, lr=3e-3))
    assert len(result.accuracy) == 1 and min(result.final) > 0.75
    assert learner.logits(1, tasks[1].test_x[:3]).shape == (3, 2)


def test_pixel_permutations_are_seeded_fixed_and_start_with_the_identity():
    a = pixel_permutations(4, 784, seed=3)
    b = pixel_permutations(4, 784, seed=3)
    c = pixel_permutations(4, 784, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    assert torch.equal(a[0], torch.arange(784))
    assert all(torch.equal(p.sort().values, torch.arange(784)) for p in a)
    assert len({tuple(p.tolist()) for p in a}) == 4


@pytest.fixture
def small_fashion(tmp_path: Path):
    write_idx_task(tmp_path / "fm", n_train=300, n_test=100)
    clear_cache()
    yield load_task("fashion-mnist", tmp_path / "fm", val_size=50)
    clear_cache()


def test_split_tasks_keep_their_classes_relabelled(small_fashion):
    tasks = split_tasks(small_fashion)
    assert [t.original_classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    _, train_y = small_fashion.tensors("train")
    for task in tasks:
        assert task.classes == 2 and set(task.train_y.tolist()) <= {0, 1}
        expected = sum(int((train_y == c).sum()) for c in task.original_classes)
        assert len(task.train_y) == expected
    with pytest.raises(ContinualError, match="more than one task"):
        split_tasks(small_fashion, [(0, 1), (1, 2)])
    with pytest.raises(ContinualError, match="not a class"):
        split_tasks(small_fashion, [(0, 10)])


def test_permuted_tasks_show_each_task_its_own_fixed_permutation(small_fashion):
    tasks = permuted_tasks(small_fashion, 3, seed=0)
    again = permuted_tasks(small_fashion, 3, seed=0)
    x, _ = next(tasks[2].test_batches())
    x_again, _ = next(again[2].test_batches())
    torch.testing.assert_close(x, x_again)
    raw = tasks[0].test_x[: len(x)]
    assert torch.equal(next(tasks[0].test_batches())[0], raw)  # task 1 is unpermuted
    assert torch.equal(x.flatten(1), raw.flatten(1)[:, tasks[2].permutation])


class _OracleLearner(ContinualLearner):
    """Confident for the task an image belongs to (its first pixel holds the task index)."""

    def logits(self, task_index: int, x: torch.Tensor) -> torch.Tensor:
        own = x.flatten(1)[:, 0].round() == task_index
        confident = torch.tensor([8.0, -8.0])
        return torch.where(own[:, None], confident, torch.zeros(2)).expand(len(x), 2)


def test_task_inference_picks_the_lowest_entropy_task():
    tasks = []
    for t in range(3):
        x = torch.zeros(10, *SHAPE)
        x[:, 0, 0, 0] = t
        y = torch.zeros(10, dtype=torch.long)
        y[5:] = 1  # the oracle always says class 0: half of each task is wrong
        tasks.append(ContinualTask(f"t{t}", 2, x, y, x, y, (0, 1)))
    assert task_inferred_accuracy(_OracleLearner(), tasks) == pytest.approx(0.5)


def test_sequence_result_measures_forgetting():
    result = SequenceResult("m", [[0.9], [0.8, 0.95], [0.7, 0.9, 0.99]], 1.0)
    assert result.average == pytest.approx((0.7 + 0.9 + 0.99) / 3)
    assert result.task1_after_each == [0.9, 0.8, 0.7]
    assert result.task1_forgetting == pytest.approx(0.2)
    assert result.forgetting == pytest.approx((0.2 + 0.05) / 2)
    assert result.to_json()["task1_forgetting"] == pytest.approx(20.0)


@pytest.mark.parametrize("build, message", [
    (lambda s: HyperMLP(s, hidden=(0,)), "hidden width"),
    (lambda s: HyperMLP(s, embedding_dim=-1), "embedding_dim"),
    (lambda s: ChunkedHyperMLP(s, chunk_size=0), "chunk_size"),
    (lambda s: HyperMLP(s, embedding_std=0.0), "embedding_std"),
    (lambda s: HyperMLP({}), "no parameters"),
    (lambda s: TargetMLP((1, 28, 28), 0), "classes"),
    (lambda s: TargetCNN((28, 28), 10), r"\(C, H, W\)"),
    (lambda s: TrainingSettings(steps=0), "steps"),
    (lambda s: TrainingSettings(lr=-1.0), "lr"),
    (lambda s: EWC(-1.0), "strength"),
    (lambda s: OnlineEWC(1.0, gamma=2.0), "gamma"),
    (lambda s: pixel_permutations(0, 10, 0), "count"),
], ids=["hidden", "embedding", "chunk", "std", "empty", "classes", "cnn-shape", "steps", "lr",
        "ewc", "gamma", "permutations"])
def test_bad_configurations_are_refused_with_a_clear_error(build, message):
    shapes = parameter_shapes(TargetMLP(SHAPE, 2, hidden=(4,)))
    with pytest.raises(ContinualError, match=message):
        build(shapes)


def test_hypernetwork_learner_refuses_mismatched_networks_and_unknown_tasks():
    target = TargetMLP(SHAPE, 2, hidden=(4,))
    hnet = HyperMLP(parameter_shapes(TargetMLP(SHAPE, 2, hidden=(5,))))
    with pytest.raises(ContinualError, match="another target network"):
        HypernetworkLearner(hnet, target, beta=0.01)
    with pytest.raises(ContinualError, match="beta"):
        HypernetworkLearner(HyperMLP(parameter_shapes(target)), target, beta=-1)
    with pytest.raises(ContinualError, match="exactly one head"):
        two_heads = TargetMLP(SHAPE, 2, hidden=(4,), heads=2)
        HypernetworkLearner(HyperMLP(parameter_shapes(two_heads)), two_heads, beta=0.01)
    with pytest.raises(ContinualError, match="unknown task 0"):
        HyperMLP(parameter_shapes(target)).weights(0)
    learner = HypernetworkLearner(HyperMLP(parameter_shapes(target)), target, beta=0.01)
    with pytest.raises(ContinualError, match="in order"):
        learner.learn(1, _teacher_task("a", 1), TrainingSettings(steps=1), torch.Generator())


def test_continual_bench_command_prints_the_table_and_writes_json(tmp_path: Path, capsys):
    import json

    from nas_service.commands import main

    # The command keeps the task's fixed validation split (5,000 images), so a few more.
    write_idx_task(tmp_path / "fm", n_train=5200, n_test=60)
    clear_cache()
    out = tmp_path / "result.json"
    argv = ["continual-bench", "--data-root", str(tmp_path / "fm"), "--quick", "--steps", "2",
            "--methods", "hnet-chunked,finetune", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "split: 5 tasks" in printed and "permuted: 3 tasks" in printed
    result = json.loads(out.read_text())
    assert set(result["split"]) == {"hnet-chunked", "finetune"}
    assert len(result["permuted"]["finetune"]["task1_after_each"]) == 3
    assert result["split"]["hnet-chunked"]["parameters"]["compression"] < 1
    assert main(["continual-bench", "--methods", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown nope" in err and "Traceback" not in err
    clear_cache()


def test_unknown_benchmarks_and_methods_are_refused(small_fashion):
    from nas_service.continual import benchmark_methods, benchmark_tasks, run_method

    with pytest.raises(ContinualError, match="unknown benchmark"):
        benchmark_tasks("rotated", small_fashion)
    assert benchmark_methods("split-cnn")[0] == "hnet-chunked"
    assert "hnet-chunked-large" in benchmark_methods("permuted")
    assert "hnet-chunked-large" not in benchmark_methods("split")
    tasks = benchmark_tasks("split", small_fashion, quick=True)
    with pytest.raises(ContinualError, match="unknown method 'hnet-chunked-large' for split"):
        run_method("split", "hnet-chunked-large", tasks, TrainingSettings(steps=1))
