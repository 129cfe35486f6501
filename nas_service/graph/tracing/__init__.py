"""``from_module``: an :class:`ArchitectureGraph` from a ``torch.nn.Module``.

Two ways to trace, one converter. :mod:`.fx_tracer` traces ``forward`` symbolically with
``torch.fx``: nothing runs, and a ResNet-50 converts in a few tens of milliseconds. When fx cannot
trace the module (Python control flow on shapes or values) or meets a call no rule converts,
:mod:`.recorder` runs the module once on a batch of 2 random inputs (eval mode, ``no_grad``, its
own device; training flags restored) under a ``torch.overrides.TorchFunctionMode`` that sees
every torch function and tensor method with its real arguments, so control flow is decided by the
run. Either way each call goes through the one rule registry of :mod:`.converter`, with abstract
values (:mod:`.values`) in place of tensors, and per-sample shapes are inferred by the graph's own
op specs as the conversion goes, so layout questions ("is this ``flatten`` a classifier input or
the first half of a patch embedding?") are answered from shapes, not guessed from names. The
module is never modified.

What cannot be expressed exactly is kept, not refused: a recorded call no rule converts becomes an
``opaque`` node that keeps its inputs, its output shape and the parameters it reads (runs of them,
attention written with ``matmul`` and ``softmax`` say, are merged into one node), so a graph
hypernetwork still predicts every parameter. ``graph.opaque_nodes`` lists them and ``to_module``
refuses such a graph. ``exact=True`` raises :class:`UnsupportedModuleError` instead, listing every
such call at once, each named by its layer (module path and type) and the function it calls.

How a conversion runs
---------------------
1. :mod:`.fx_tracer` traces ``forward`` into an fx graph. Layers defined in ``torch.nn`` are
   leaves (one ``call_module`` node each); everything else, subclasses of ``torch.nn`` layers
   defined elsewhere included, is traced through into ``call_function``/``call_method`` nodes.
2. :mod:`.converter` walks the fx graph in order. Each call node is looked up in the one rule
   registry (a layer by its exact type, a function by identity, a tensor method by name); the
   rule appends ``nas-graph/1`` nodes with ``cx.add``, which validates attributes, infers the
   output shape and matches the layer's tensors to the op's parameters. A rule refuses by
   raising ``_Unsupported(reason)``: the converter records the node with that reason, finds its
   output shape on the meta device, and goes on. Arithmetic on concrete sizes is evaluated.
3. If a problem reaches the output, or fx could not trace, :mod:`.recorder` converts a recorded
   run instead: a ``torch.nn`` layer that has a rule is one call (its inner calls unrecorded),
   other layers are recorded through; tensors map to graph values by identity, parameters and
   buffers to their names. Reshapes are read from the shapes in and out, every value a rule
   returns is checked against the recorded tensor's shape, and a refused call becomes an
   ``opaque`` node (or, where its output's batch is not its first dimension, a pending value the
   next batch-first call folds into one).
4. :mod:`.assembly` keeps the nodes that reach the output, reports the problems among them,
   fuses ``conv2d -> to_tokens`` into ``patch_embed``, merges chains of opaque nodes and
   validates the document.

What is supported (one module per group of rules)
-------------------------------------------------
* :mod:`.module_rules`, ``torch.nn`` layers: ``Conv2d``, ``Conv1d``, ``ConvTranspose2d``,
  ``Linear`` (also on channels-last maps, as a 1x1 convolution), ``BatchNorm1d``/``2d``,
  ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d``/``2d``, the activation layers, ``PReLU``,
  ``Dropout`` (1d/2d/3d), ``Identity``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
  ``AdaptiveMaxPool2d``, ``Flatten``, ``Upsample``, the padding layers, ``LSTM``/``GRU``/``RNN``,
  ``Embedding`` and ``MultiheadAttention`` (batch-first self-attention without masks; so
  ``TransformerEncoderLayer``/``TransformerEncoder`` convert, recorded through, into attention,
  norm, linear and activation nodes);
* :mod:`.call_rules`, calls that compute values: the functional and tensor-method activations,
  ``F.dropout``, ``+``/``*``/``-`` of computed tensors, ``x * self.gamma`` (layer scale),
  ``torch.cat``, and the vision-transformer idioms ``tokens + self.pos_embed`` and
  ``torch.cat([self.cls_token.expand(B, -1, -1), x], 1)``;
* :mod:`.shape_rules`, calls on shapes: sizes, ``flatten``, ``view``/``reshape``,
  ``squeeze``/``unsqueeze``, permutes (into tokens, channels-last around ``LayerNorm`` and
  ``Linear``, any other as ``permute``), ``x[:, i]`` on tokens, slices of one axis
  (``x[:, :c]``, ``split``, ``chunk``, ``narrow``), ``mean``/``amax`` over the spatial dims or
  the tokens;
* :mod:`.functional_rules`, functional layers: pooling, ``F.interpolate``, ``F.pad``, and
  ``F.linear``, ``F.conv2d``, ``F.conv1d``, ``F.conv_transpose2d``, ``F.layer_norm``,
  ``F.batch_norm``, ``F.group_norm``, ``F.instance_norm``, ``F.prelu``, ``F.embedding`` with
  the module's own parameters; a convolution whose weight is standardised in ``forward`` (checked
  on the recorded numbers) is a ``std_conv2d``.

Where a new rule goes
---------------------
A rule for a ``torch.nn`` layer is ``(cx, node, module, args, kwargs) -> value``, registered with
``@_module_rule(LayerType)`` in :mod:`.module_rules`. A rule for a function or tensor method is
``(cx, node, args, kwargs) -> value``, registered with ``@_call_rule(functions=[...],
methods=[...])`` in the rules module of its group above. ``node`` is an fx node or a recorded
call: a rule reads only its ``name``, ``op``, ``target`` and ``meta``. It reads its arguments
with the helpers of :mod:`.arguments` (a ``_sig_*`` function mirroring the torch signature,
bound by ``_bind``), builds nodes with ``cx.add`` and refuses with ``_Unsupported("why")``, whose
message the user reads. A new op is declared in :mod:`nas_service.graph.ops` first. Each layer
type, function and method name has exactly one rule. A new rules module is imported below, or its
rules never register.

Names with a leading underscore are private to this package.
"""

# The rules modules fill the converter's registry as a side effect of being imported; nothing
# else imports them, so they are imported here, before the first conversion can run. No layer
# type, function or method name is claimed by two rules, so the order below decides nothing.
from . import call_rules, functional_rules, module_rules, shape_rules  # noqa: F401
from .assembly import from_module, map_state_dict
from .errors import UnsupportedModuleError

__all__ = ["UnsupportedModuleError", "from_module", "map_state_dict"]
