"""The recurrent layers and the character language model (nas_service.sequence)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from nas_service.sequence import (
    KINDS,
    CharLanguageModel,
    CharModelConfig,
    HyperLSTMCell,
    HyperRHNCell,
    RHNCell,
    batch_streams,
    bits_per_character,
    count_parameters,
    evaluate_bpc,
    gradient_flow,
    hidden_size_for_parameters,
    train_steps,
)

T, B, IN, H = 6, 3, 5, 7


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> Iterator[None]:
    # the recurrences are many tiny products: a second thread only adds synchronisation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _cells(layer_norm: bool = False) -> dict[str, nn.Module]:
    return {"rhn": RHNCell(IN, H, depth=3, layer_norm=layer_norm),
            "hyper-lstm": HyperLSTMCell(IN, H, hyper_size=4, layer_norm=layer_norm),
            "hyper-rhn": HyperRHNCell(IN, H, depth=2, hyper_size=4, layer_norm=layer_norm)}


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("kind", ["rhn", "hyper-lstm", "hyper-rhn"])
def test_cells_map_a_sequence_to_one_hidden_vector_per_step(kind: str, layer_norm: bool) -> None:
    cell = _cells(layer_norm)[kind]
    x = torch.randn(T, B, IN)
    y, state = cell(x)
    assert y.shape == (T, B, H)
    assert torch.equal(cell.output_state(state), y[-1])
    # carrying the state over a cut gives the same outputs as one long call
    y1, s1 = cell(x[:2])
    y2, _ = cell(x[2:], s1)
    torch.testing.assert_close(torch.cat([y1, y2]), y)


def test_rhn_with_depth_one_is_the_documented_highway_recurrence() -> None:
    cell = RHNCell(IN, H, depth=1)
    x = torch.randn(T, B, IN)
    W, R, b = cell.input_proj.weight, cell.recurrent_weight[0], cell.recurrent_bias[0]
    s, expected = torch.zeros(B, H), []
    for t in range(T):
        a = x[t] @ W.t() + s @ R + b
        h, tau = torch.tanh(a[:, :H]), torch.sigmoid(a[:, H:])
        s = h * tau + s * (1 - tau)  # carry gate coupled: c = 1 - t
        expected.append(s)
    y, _ = cell(x)
    torch.testing.assert_close(y, torch.stack(expected))


def test_rhn_depth_adds_highway_layers_within_a_step() -> None:
    deep = RHNCell(IN, H, depth=2)
    shallow = RHNCell(IN, H, depth=1)
    with torch.no_grad():
        shallow.input_proj.weight.copy_(deep.input_proj.weight)
        shallow.recurrent_weight.copy_(deep.recurrent_weight[:1])
        shallow.recurrent_bias.copy_(deep.recurrent_bias[:1])
    x = torch.randn(1, B, IN)
    s1 = shallow(x)[0][0]
    a = s1 @ deep.recurrent_weight[1] + deep.recurrent_bias[1]  # no input at depth 2
    h, tau = torch.tanh(a[:, :H]), torch.sigmoid(a[:, H:])
    torch.testing.assert_close(deep(x)[0][0], h * tau + s1 * (1 - tau))


def test_hyper_lstm_with_neutral_hypernetwork_is_an_nn_lstm() -> None:
    cell = HyperLSTMCell(IN, H, hyper_size=4)  # the scale projections start at zero
    lstm = nn.LSTM(IN, H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(cell.input_proj.weight)
        lstm.weight_hh_l0.copy_(cell.recurrent_weight.t())
        lstm.bias_ih_l0.copy_(cell.bias)
        lstm.bias_hh_l0.zero_()
    x = torch.randn(T, B, IN)
    torch.testing.assert_close(cell(x)[0], lstm(x)[0])
    with torch.no_grad():  # a hypernetwork that says something changes the cell
        cell.scales.project.normal_()
    assert (cell(x)[0] - lstm(x)[0]).abs().max() > 1e-2


def test_hyper_rhn_with_neutral_hypernetwork_is_its_rhn() -> None:
    cell = HyperRHNCell(IN, H, depth=3, hyper_size=4)
    x = torch.randn(T, B, IN)
    torch.testing.assert_close(cell(x)[0], cell.main(x)[0])
    with torch.no_grad():
        for scales in cell.scales:
            scales.project.normal_()
    assert (cell(x)[0] - cell.main(x)[0]).abs().max() > 1e-2


def test_hypernetwork_receives_gradient_once_its_projection_moves() -> None:
    cell = HyperRHNCell(IN, H, depth=2, hyper_size=4)
    cell(torch.randn(T, B, IN))[0].sum().backward()
    assert all(s.project.grad is not None and s.project.grad.abs().sum() > 0
               for s in cell.scales)


def test_bits_per_character_is_cross_entropy_in_log2() -> None:
    logits = torch.randn(4, 2, 5)
    targets = torch.randint(0, 5, (4, 2))
    p = logits.softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(bits_per_character(logits, targets), -torch.log2(p).mean())
    uniform = torch.zeros(3, 1, 8)
    assert bits_per_character(uniform, torch.zeros(3, 1, dtype=torch.long)).item() == \
        pytest.approx(3.0)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_learns_a_tiny_string(kind: str) -> None:
    text = "the cat sat on the mat. " * 20
    vocab = sorted(set(text))
    tokens = torch.tensor([vocab.index(c) for c in text])
    cfg = CharModelConfig(kind, vocab_size=len(vocab), hidden_size=16, depth=2, hyper_size=4,
                          embedding_size=8)
    model = CharLanguageModel(cfg)
    before = evaluate_bpc(model, tokens, bptt=30, batch_size=4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    train_steps(model, batch_streams(tokens, 4), bptt=30, optimizer=opt, max_steps=40)
    after = evaluate_bpc(model, tokens, bptt=30, batch_size=4)
    uniform = math.log2(len(vocab))
    assert before > 0.9 * uniform
    assert after < 0.25 * uniform, (kind, before, after)


def test_state_carries_across_truncated_windows() -> None:
    model = CharLanguageModel(CharModelConfig("rhn", vocab_size=6, hidden_size=5, depth=2))
    tokens = torch.randint(0, 6, (10, 2))
    whole, _ = model(tokens)
    first, state = model(tokens[:4])
    rest, _ = model(tokens[4:], state)
    torch.testing.assert_close(torch.cat([first, rest]), whole)


def test_equal_parameter_widths() -> None:
    for kind in KINDS:
        cfg = hidden_size_for_parameters(CharModelConfig(kind, 50, 1, depth=3, hyper_size=8),
                                         40_000)
        n = count_parameters(CharLanguageModel(cfg))
        wider = count_parameters(CharLanguageModel(
            CharModelConfig(**{**cfg.to_dict(), "hidden_size": cfg.hidden_size + 1})))
        assert n <= 40_000 < wider, kind
    with pytest.raises(ValueError, match="exceed"):
        hidden_size_for_parameters(CharModelConfig("hyper-rhn", 50, 1), 1_000)


def test_gradient_flow_reaches_back_through_the_recurrence() -> None:
    for kind in KINDS:
        model = CharLanguageModel(CharModelConfig(kind, 6, 8, depth=2, hyper_size=4))
        flow = gradient_flow(model, torch.randint(0, 6, (30, 2)), length=10, batches=2)
        assert len(flow) == 9 and all(v > 0 for v in flow), kind


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        CharModelConfig("gru", 10, 8)
    with pytest.raises(ValueError, match="nn.LSTM"):
        CharModelConfig("lstm", 10, 8, layer_norm=True)
    with pytest.raises(ValueError, match="dropout"):
        CharModelConfig("rhn", 10, 8, dropout=1.0)
    with pytest.raises(ValueError, match="too few"):
        batch_streams(torch.arange(5), 4)


def test_train_char_lm_command_trains_scores_and_writes_a_loadable_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas_service.commands import main
    from nas_service.training.char_lm import load_char_lm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 30)
    out = tmp_path / "run"
    status = main(["train-char-lm", "--kind", "rhn", "--hidden", "8", "--depth", "2",
                   "--corpus", str(corpus), "--min-count", "1", "--steps", "3",
                   "--batch-size", "2", "--bptt", "10", "--no-progress", "--out", str(out)])
    assert status == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and 0 < result["val_bpc"] < 10
    assert f"validation {result['val_bpc']:.3f} bpc" in capsys.readouterr().out
    model, vocabulary = load_char_lm(out / "char-lm.safetensors")
    assert vocabulary[0] == "\ufffd" and model.config.hidden_size == 8
    assert main(["train-char-lm", "--corpus", str(tmp_path / "missing.txt")]) == 1
    assert "file not found" in capsys.readouterr().err
