"""Character language models in ``nas-graph/1``: token-id inputs, per-token logits
(``task="next_token"``), the cells of :mod:`nas_service.sequence` as ops, and ``from_module`` on
``nn.LSTM``/``GRU``/``RNN`` language models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nas_service.graph import (
    ArchitectureGraph,
    GraphBuilder,
    GraphValidationError,
    from_module,
    map_state_dict,
    to_module,
)
from nas_service.sequence import CharLanguageModel, CharModelConfig

VOCAB, T = 11, 7


class RecurrentCharModel(nn.Module):
    """Embedding -> ``nn.LSTM``/``GRU``/``RNN`` (batch first) -> a logit vector per token."""

    def __init__(self, layer: type[nn.RNNBase], layers: int = 2, **kwargs: Any):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.rnn = layer(6, 9, num_layers=layers, batch_first=True, **kwargs)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(9 * (2 if kwargs.get("bidirectional") else 1), VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(tokens))
        return self.head(self.drop(y))


@pytest.mark.parametrize("trace", ["symbolic", "run"])
@pytest.mark.parametrize(("layer", "kwargs"), [
    (nn.LSTM, {}), (nn.GRU, {"dropout": 0.1}), (nn.RNN, {"nonlinearity": "relu"}),
    (nn.LSTM, {"bidirectional": True})], ids=["lstm", "gru", "rnn-relu", "lstm-bi"])
def test_from_module_converts_recurrent_language_models_exactly(
        layer: type[nn.RNNBase], kwargs: dict[str, Any], trace: str) -> None:
    torch.manual_seed(0)
    model = RecurrentCharModel(layer, **kwargs).eval()
    graph = from_module(model, (T,), trace=trace, exact=True)  # type: ignore[arg-type]
    assert graph.task == "next_token" and graph.num_classes == VOCAB
    assert graph.output_node.shape == (T, VOCAB)
    assert [n.op for n in graph.nodes] == ["input", "embedding", "recurrent", "dropout", "linear",
                                           "output"]
    net = to_module(graph).eval()
    net.load_state_dict(map_state_dict(graph, model.state_dict()))
    tokens = torch.randint(0, VOCAB, (3, T))
    with torch.no_grad():
        assert torch.equal(net(tokens), model(tokens))
    assert ArchitectureGraph.from_json(graph.to_json()) == graph


def test_from_module_still_refuses_per_token_outputs_of_non_token_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 3))  # (T, D) -> (T, 3): not a language model
    with pytest.raises(Exception, match="per-sample shape"):
        from_module(model, (5, 4), exact=True)


def _language_model_graph(config: CharModelConfig, steps: int) -> ArchitectureGraph:
    """The graph of :class:`CharLanguageModel` ``config`` (eval mode: dropout left out)."""
    b = GraphBuilder((steps,), input_id="tokens")
    x = b.add("embedding", b.input, id="embedding", num_embeddings=config.vocab_size,
              embedding_dim=config.embedding_size)
    for k in range(config.num_layers):
        if config.kind == "lstm":
            x = b.add("recurrent", x, id=f"layer{k}", mode="lstm",
                      hidden_size=config.hidden_size)
        elif config.kind == "rhn":
            x = b.add("rhn", x, id=f"layer{k}", hidden_size=config.hidden_size,
                      depth=config.depth, layer_norm=config.layer_norm)
        elif config.kind == "hyper-lstm":
            x = b.add("hyper_lstm", x, id=f"layer{k}", hidden_size=config.hidden_size,
                      hyper_size=config.hyper_size,
                      hyper_embedding_size=config.hyper_embedding_size,
                      layer_norm=config.layer_norm)
        else:
            x = b.add("hyper_rhn", x, id=f"layer{k}", hidden_size=config.hidden_size,
                      depth=config.depth, hyper_size=config.hyper_size,
                      hyper_embedding_size=config.hyper_embedding_size,
                      layer_norm=config.layer_norm)
    head = b.add("linear", x, id="decoder", out_features=config.vocab_size)
    return b.build(head, config.vocab_size, task="next_token")


def _graph_names(model: CharLanguageModel) -> dict[str, str]:
    """Library parameter name -> graph parameter name."""
    out = {}
    for name in model.state_dict():
        if name.startswith("layers."):
            _, k, rest = name.split(".", 2)
            out[name] = f"layer{k}.{rest.removeprefix('lstm.')}"  # LSTMLayer wraps nn.LSTM
        else:
            out[name] = name
    return out


@pytest.mark.parametrize("config", [
    CharModelConfig("lstm", VOCAB, 8, num_layers=2, embedding_size=5),
    CharModelConfig("rhn", VOCAB, 8, num_layers=2, depth=3, embedding_size=5, layer_norm=True),
    CharModelConfig("hyper-lstm", VOCAB, 8, hyper_size=4, hyper_embedding_size=3,
                    embedding_size=5, layer_norm=True),
    CharModelConfig("hyper-rhn", VOCAB, 8, num_layers=2, depth=2, hyper_size=4,
                    hyper_embedding_size=3, embedding_size=5),
], ids=lambda c: c.kind)
def test_graph_cells_compute_what_the_library_language_model_computes(
        config: CharModelConfig) -> None:
    torch.manual_seed(1)
    model = CharLanguageModel(config).eval()
    for p in model.parameters():  # the hypernetworks' projections start at zero: move them
        p.data.normal_(0.0, 0.3)
    graph = _language_model_graph(config, T)
    assert graph.num_parameters == sum(p.numel() for p in model.parameters())
    net = to_module(graph).eval()
    names = _graph_names(model)
    assert set(names.values()) == set(net.state_dict())
    net.load_state_dict({names[k]: v for k, v in model.state_dict().items()})
    tokens = torch.randint(0, VOCAB, (3, T))
    with torch.no_grad():
        expected, _ = model(tokens.t())  # the library model is time-major
        assert torch.allclose(net(tokens), expected.transpose(0, 1), atol=1e-6)


def test_a_next_token_output_needs_token_ids_and_a_logit_vector_per_token() -> None:
    b = GraphBuilder((5, 4))  # (T, D) features, not token ids
    with pytest.raises(GraphValidationError, match=r"\[T\] token ids"):
        b.build(b.add("linear", b.input, out_features=3), 3, task="next_token")
    b = GraphBuilder((5,))
    x = b.add("embedding", b.input, num_embeddings=3, embedding_dim=4)
    with pytest.raises(GraphValidationError, match=r"\(T, num_classes=3\)"):
        b.build(b.add("linear", x, out_features=2), 3, task="next_token")
    with pytest.raises(GraphValidationError, match="logits for each of the 5 input tokens"):
        b.build(b.add("linear", b.add("slice", x, end=4), out_features=3), 3, task="next_token")
    with pytest.raises(GraphValidationError, match="vector of num_classes=3"):
        b.build(b.add("linear", x, out_features=3), 3)  # a classifier needs one vector


def test_the_task_attribute_leaves_classifier_documents_and_hashes_as_they_were() -> None:
    b = GraphBuilder((4,))
    graph = b.build(b.add("linear", b.input, out_features=3), 3)
    assert graph.task == "classification"
    doc = graph.to_dict()
    assert "task" not in doc["nodes"][-1]
    doc["nodes"][-1]["task"] = "classification"
    assert ArchitectureGraph.from_dict(doc).content_hash() == graph.content_hash()
