"""Adapting a GHN to a new task without forgetting the tasks it already scores.

Continual learning with hypernetworks (von Oswald et al., ICLR 2020), with the GHN as the
hypernetwork: task ``t`` gets an embedding ``e_t`` (:meth:`GraphHyperNetwork.add_task`), learnt
together with the GHN's weights ``Θ`` on the loss

    L = L_task(t) + (β / T') · Σ_{t' earlier} ‖ h(e_t', Θ) − h(e_t', Θ*) ‖²

where ``L_task`` is GHN-2's meta-loss on ``t`` (the cross-entropy of networks run with the
parameters the GHN predicts for them), ``h(e_t', Θ)`` every parameter the GHN predicts for a
fixed *probe set* of architectures of the earlier task ``t'`` (its input shape and class count),
and ``Θ*`` the weights before ``t`` was added: the GHN rehearses its own earlier outputs, no
earlier data is needed. Earlier embeddings stay fixed. ``β = 0`` is plain sequential
fine-tuning, the baseline the regulariser is measured against (``bench/``). With ``lr = 0``
(``AdaptationConfig.lr``) only ``e_t`` is learnt: ``Θ`` stays ``Θ*``, so every earlier task's
predictions stay exactly what they were and the regulariser is not needed; the service adapts
this way by default, because measured on this GHN the regulariser did not keep earlier tasks'
scores (``bench/task_adaptation_bench.py``, ``docs/continual.md``).

:class:`TaskAdapter` holds one adaptation: the targets ``h(e_t', Θ*)``, an Adam optimizer over
``Θ`` and ``e_t``, and the step count; :meth:`TaskAdapter.state` and
:meth:`TaskAdapter.load_state` save and restore it as plain tensors (safetensors), so a crashed
adaptation resumes where its last saved state left it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nas_service.graph import ArchitectureGraph, to_module

from .model import GraphHyperNetwork


@dataclass(frozen=True)
class AdaptationConfig:
    steps: int
    beta: float = 0.01
    """Weight of the output regulariser (the paper's defaults: 0.01 to 0.1)."""
    lr: float = 1e-4
    """Of the GHN's weights: small, as they already serve other tasks. ``0``: the weights stay
    as they are and only the task's embedding is learnt, so every earlier task's predictions
    stay exactly what they were (the regulariser then has nothing to do and is skipped)."""
    embedding_lr: float = 1e-2
    grad_clip: float = 5.0


Probes = Mapping[str | None, Sequence[ArchitectureGraph]]
"""The probe architectures of each earlier task (``None``: the GHN's own task)."""


def _flat(predicted: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for params in predicted for t in params.values()])


def meta_loss(ghn: GraphHyperNetwork, graphs: Sequence[ArchitectureGraph], images: torch.Tensor,
              labels: torch.Tensor, task: str | None, nets: dict[str, nn.Module]
              ) -> tuple[torch.Tensor, float]:
    """GHN-2's meta-loss on one batch of ``task``: the cross-entropy of each of ``graphs`` run
    on ``images`` with the parameters ``ghn`` predicts for it (in train mode), averaged, and the
    mean accuracy. ``nets`` caches the networks by graph (at most 64; the parameters come from
    the GHN, so a network is only its structure)."""
    predicted = ghn.predict(list(graphs), task=task)
    loss = torch.zeros((), device=ghn.device)
    correct = 0.0
    for graph, params in zip(graphs, predicted, strict=True):
        key = graph.content_hash()
        net = nets.get(key)
        if net is None:
            if len(nets) >= 64:
                nets.pop(next(iter(nets)))
            net = nets[key] = to_module(graph, initialize=False, device=ghn.device)
        logits = functional_call(net.train(), params, (images,))
        loss = loss + F.cross_entropy(logits, labels)
        correct += float((logits.argmax(1) == labels).float().mean())
    return loss / len(graphs), correct / len(graphs)


class TaskAdapter:
    """One adaptation of ``ghn`` to ``task`` (added to the GHN with a zero embedding when it has
    none), keeping its predictions for the earlier tasks of ``probes``. Marks what it trains:
    the task's embedding, and the GHN's weights only when ``config.lr > 0`` (their
    ``requires_grad`` says so afterwards too)."""

    def __init__(self, ghn: GraphHyperNetwork, task: str, probes: Probes,
                 config: AdaptationConfig) -> None:
        self.ghn = ghn
        self.task = task
        self.config = config
        if task not in ghn.task_embeddings:
            ghn.add_task(task)
        self.embedding = ghn.task_embeddings[task]
        self.adapts_weights = config.lr > 0
        # Earlier tasks: their probe graphs, featurised once, and their outputs under Θ*
        # (nothing to keep when Θ does not move).
        self.earlier = [t for t in probes if t != task]
        kept = self.earlier if self.adapts_weights else []
        self._probes = {t: ghn.prepare(list(probes[t])) for t in kept}
        with torch.no_grad():
            self.targets = {t: _flat(ghn(*self._probes[t], task=t)).detach() for t in kept}
        for t, embedding in ghn.task_embeddings.items():  # earlier embeddings are fixed
            embedding.requires_grad_(t == task)
        for p in ghn.parameters():
            p.requires_grad_(self.adapts_weights)
        groups = [{"params": [self.embedding], "lr": config.embedding_lr}]
        if self.adapts_weights:
            groups.insert(0, {"params": list(ghn.parameters()), "lr": config.lr})
        self.optimizer = torch.optim.Adam(groups)
        self.step = 0
        self._nets: dict[str, nn.Module] = {}

    def regularizer(self) -> torch.Tensor:
        """``(β / T') Σ_t' ‖h(e_t', Θ) − h(e_t', Θ*)‖²`` over the earlier tasks (zero without
        any, or with ``β = 0``)."""
        if not self.targets or self.config.beta == 0:
            return torch.zeros((), device=self.ghn.device)
        total = sum(((_flat(self.ghn(*self._probes[t], task=t)) - self.targets[t]) ** 2).sum()
                    for t in self.targets)
        return self.config.beta / len(self.earlier) * total  # type: ignore[return-value]

    def train_step(self, graphs: Sequence[ArchitectureGraph], images: torch.Tensor,
                   labels: torch.Tensor) -> dict[str, float]:
        """One update on a batch of the new task: ``{"loss", "accuracy", "regularizer"}``,
        means over ``graphs``."""
        self.ghn.train()
        task_loss, accuracy = meta_loss(self.ghn, graphs, images, labels, self.task,
                                        self._nets)
        regularizer = self.regularizer()
        self.optimizer.zero_grad(set_to_none=True)
        (task_loss + regularizer).backward()
        torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]],
            self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.ghn.eval()
        return {"loss": float(task_loss.detach()), "accuracy": accuracy,
                "regularizer": float(regularizer.detach())}

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """How far each earlier task's predictions moved: ``‖h − h*‖ / ‖h*‖`` on its probes
        (``0`` when the weights are not adapted: nothing of an earlier task can move)."""
        if not self.adapts_weights:
            return {t or "": 0.0 for t in self.earlier}
        return {t or "": float((_flat(self.ghn(*self._probes[t], task=t)) - self.targets[t])
                               .norm() / self.targets[t].norm().clamp_min(1e-12))
                for t in self.earlier}

    # ---- saving and resuming ---------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """Everything a resumed adaptation needs besides ``Θ*``: the GHN's weights, the task's
        embedding, Adam's moments and the step, as CPU tensors."""
        out = {f"ghn.{k}": v.detach().cpu().contiguous()
               for k, v in self.ghn.state_dict().items()}
        out["embedding"] = self.embedding.detach().cpu().contiguous()
        out["step"] = torch.tensor(self.step)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            for key, value in self.optimizer.state.get(p, {}).items():
                out[f"optimizer.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        return out

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` saved (the adapter built on the same ``Θ*``)."""
        self.ghn.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ghn.")})
        with torch.no_grad():
            self.embedding.copy_(state["embedding"])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            entries = {k.split(".", 2)[2]: v for k, v in state.items()
                       if k.startswith(f"optimizer.{i}.")}
            if entries:
                self.optimizer.state[p] = {
                    k: v.to(p.device) if k != "step" else v.clone() for k, v in entries.items()}
        self.step = int(state["step"])
