"""``from_module``: an :class:`ArchitectureGraph` from a ``torch.nn.Module``, by ``torch.fx``.

The module is traced symbolically (``torch.fx.Tracer``): nothing runs on data, the module is never
modified, and it works under ``torch.no_grad()``. The fx graph is then interpreted abstractly: each
fx node becomes zero or more ``nas-graph/1`` nodes, with per-sample shapes inferred by the graph's
own op specs as the conversion goes, so layout questions ("is this ``flatten`` a classifier input
or the first half of a patch embedding?") are answered from shapes, not guessed from names.

Unsupported layers are collected, not raised one at a time: :class:`UnsupportedModuleError` lists
every one that contributes to the output.

How a conversion runs
---------------------
1. :mod:`.fx_tracer` traces ``forward`` into an fx graph. Layers defined in ``torch.nn`` are
   leaves (one ``call_module`` node each); everything else, subclasses of ``torch.nn`` layers
   defined elsewhere included, is traced through into ``call_function``/``call_method`` nodes.
2. :mod:`.converter` walks the fx graph in order with the values of :mod:`.values` in place of
   tensors. Each call node is looked up in the one rule registry (a layer by its exact type, a
   function by identity, a tensor method by name); the rule appends ``nas-graph/1`` nodes with
   ``cx.add``, which validates attributes, infers the output shape and matches the layer's
   tensors to the op's parameters. A rule refuses by raising ``_Unsupported(reason)``: the
   converter records the node with that reason, finds its output shape on the meta device, and
   goes on, so later problems are found too. Arithmetic on concrete sizes (``C // 2``) is
   evaluated directly.
3. :mod:`.assembly` keeps the nodes that reach the output, reports the problems among them,
   fuses ``conv2d -> to_tokens`` into ``patch_embed`` and validates the document.

What is supported (one module per group of rules)
-------------------------------------------------
* :mod:`.module_rules`, ``torch.nn`` layers: ``Conv2d``, ``Linear``, ``BatchNorm1d``/``2d``,
  ``LayerNorm``, ``GroupNorm``, ``ReLU``, ``ReLU6``, ``LeakyReLU``, ``ELU``, ``GELU``, ``SiLU``,
  ``Mish``, ``Tanh``, ``Sigmoid``, ``Hardswish``, ``Hardsigmoid``, ``Dropout`` (1d/2d/3d),
  ``Identity``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``,
  ``Flatten``, ``MultiheadAttention`` (batch-first self-attention without masks);
* :mod:`.call_rules`, calls that compute values: the functional and tensor-method activations,
  ``F.dropout``, ``+``/``*`` of computed tensors, ``torch.cat``, and the vision-transformer
  idioms ``tokens + self.pos_embed`` and ``torch.cat([self.cls_token.expand(B, -1, -1), x], 1)``;
* :mod:`.shape_rules`, calls on shapes: ``size``, ``dim``, ``.shape``, ``.ndim``, ``x[:, i]`` on
  tokens, ``flatten``, ``view``/``reshape``, ``squeeze``/``unsqueeze``, ``permute``/
  ``transpose``/``swapaxes`` (into tokens, and channels-last around ``LayerNorm``),
  ``contiguous``/``clone``/``detach``, ``mean``/``amax`` over the spatial dims or the tokens;
* :mod:`.functional_rules`, functional layers: ``F.max_pool2d``, ``F.avg_pool2d``,
  ``F.adaptive_avg_pool2d``, ``F.adaptive_max_pool2d``, and ``F.linear``, ``F.conv2d``,
  ``F.layer_norm`` with the module's own parameters.

Where a new rule goes
---------------------
A rule for a ``torch.nn`` layer is ``(cx, node, module, args, kwargs) -> value``, registered with
``@_module_rule(LayerType)`` in :mod:`.module_rules`. A rule for a function or tensor method is
``(cx, node, args, kwargs) -> value``, registered with ``@_call_rule(functions=[...],
methods=[...])`` in the rules module of its group above. It reads its arguments with the helpers
of :mod:`.arguments` (a ``_sig_*`` function mirroring the torch signature, bound by ``_bind``),
builds nodes with ``cx.add`` and refuses with ``_Unsupported("why")``, whose message the user
reads. A new op is declared in :mod:`nas_service.graph.ops` first. Each layer type, function and
method name has exactly one rule. A new rules module is imported below, or its rules never
register.

Names with a leading underscore are private to this package.
"""

# The rules modules fill the converter's registry as a side effect of being imported; nothing
# else imports them, so they are imported here, before the first conversion can run. No layer
# type, function or method name is claimed by two rules, so the order below decides nothing.
from . import call_rules, functional_rules, module_rules, shape_rules  # noqa: F401
from .assembly import from_module, map_state_dict
from .errors import UnsupportedModuleError

__all__ = ["UnsupportedModuleError", "from_module", "map_state_dict"]
