"""Node addressing: a node string names one scalar score f_y(x) of a network, computed by running the network
only as far as that node's layer.

Syntax (shared by the API, ``gencnn sample`` and the GUI):

- ``logits:K`` or a class name (``espresso``, ``tiger cat``): output K of the classifier;
- ``LAYER:C``: channel C of a conv layer, its centre unit; ``LAYER:C,Y,X``: one unit; ``LAYER:C,mean``: the
  channel's spatial mean;
- linear layers ``(B, F)``: ``LAYER:F``; token layers ``(B, T, D)``: ``LAYER:D`` (mean over tokens) or ``LAYER:D,T``.

:class:`Node` is the one parser and formatter of these strings (API, CLI and GUI); its typed constructors
(``Node.output``, ``Node.channel``, ``Node.unit``, ``Node.feature``, ``Node.token``) build the same nodes in code.

LAYER is a module path from ``named_modules()``; ``PATH_1``, ``PATH_2`` address a module's 2nd, 3rd call in one
forward pass (torchvision's FX naming, e.g. ResNet's reused ``layer1.0.relu_1``). The truncated network comes from
FX feature extraction (timm's or torchvision's); models FX cannot trace fall back to a forward hook that stops the
forward pass at the layer, which also keeps later in-place activations from touching the node's output.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch
from torch import nn

from .specs import ModelInfo

__all__ = ["Node", "LayerInfo", "parse_node", "list_layers", "node_score", "NodeScore", "NodeError", "check_node"]

LOGITS = "logits"


class NodeError(ValueError):
    """A node string that does not name a node of this model."""


@dataclass(frozen=True)
class Node:
    """A node: ``layer`` ("logits" for the output), ``index`` (class, channel or feature), optional
    ``position`` ((y, x) for conv units, (t,) for a token) and ``reduce`` ("centre", "unit", "mean", "index").

    Build one with :meth:`parse` from a string, or with a typed constructor; ``str(node)`` is its string.
    """

    layer: str
    index: int
    position: tuple[int, ...] = ()
    reduce: str = "centre"

    @classmethod
    def output(cls, k: int) -> Node:
        """Output (class) ``k`` of the classifier: ``logits:K``."""
        return cls(LOGITS, int(k), (), "index")

    @classmethod
    def channel(cls, layer: str, c: int, mean: bool = False) -> Node:
        """Channel ``c`` of a conv layer: its centre unit (``LAYER:C``) or its spatial mean (``LAYER:C,mean``)."""
        return cls(layer, int(c), (), "mean" if mean else "centre")

    @classmethod
    def unit(cls, layer: str, c: int, y: int, x: int) -> Node:
        """One unit of a conv layer: ``LAYER:C,Y,X``."""
        return cls(layer, int(c), (int(y), int(x)), "unit")

    @classmethod
    def feature(cls, layer: str, d: int) -> Node:
        """Feature ``d`` of a linear layer (``LAYER:D``), or of a token layer averaged over its tokens."""
        return cls(layer, int(d), (), "centre")

    @classmethod
    def token(cls, layer: str, d: int, t: int) -> Node:
        """Feature ``d`` of token ``t`` of a token layer (B, T, D): ``LAYER:D,T``."""
        return cls(layer, int(d), (int(t),), "unit")

    @classmethod
    def parse(cls, text: str, class_names: list[str] | None = None) -> Node:
        """Parse a node string (see the module docstring); class names need ``class_names``."""
        return parse_node(text, class_names)

    def label(self, class_names: list[str] | None = None) -> str:
        """The string, with the class name for an output node: ``logits:282 (tiger cat)``."""
        if self.layer == LOGITS and class_names and 0 <= self.index < len(class_names):
            return f"{self} ({class_names[self.index]})"
        return str(self)

    def __str__(self) -> str:
        if self.layer == LOGITS:
            return f"{LOGITS}:{self.index}"
        rest = {"centre": "", "mean": ",mean", "index": ""}.get(self.reduce, "")
        if self.position:
            rest = "," + ",".join(str(p) for p in self.position)
        return f"{self.layer}:{self.index}{rest}"


@dataclass
class LayerInfo:
    """One addressable layer: its path, module type, per-example output shape and number of nodes."""

    name: str
    type: str
    shape: tuple[int, ...]
    num_nodes: int


def _class_index(name: str, class_names: list[str]) -> int | None:
    """Exact, case-insensitive match on a class name or on any of its comma-separated synonyms."""
    key = name.strip().lower()
    for i, full in enumerate(class_names):
        if key == full.lower() or key in (s.strip().lower() for s in full.split(",")):
            return i
    return None


def parse_node(text: str, class_names: list[str] | None = None) -> Node:
    """Parse a node string (see the module docstring). Class names need ``class_names``."""
    if not isinstance(text, str):
        raise NodeError(f"a node is a string such as logits:3 or conv2:7, got {type(text).__name__}")
    text = text.strip()
    if len(text) > 1000:
        raise NodeError("node string too long")
    if not text:
        raise NodeError("empty node string")
    if ":" not in text:
        idx = _class_index(text, class_names or [])
        if idx is None:
            close = difflib.get_close_matches(text.lower(), [c.lower() for c in class_names or []], n=3, cutoff=0.6)
            hint = f"; close class names: {', '.join(close)}" if close else ""
            raise NodeError(f"{text!r} is neither LAYER:INDEX nor a class name of this model{hint}")
        return Node(LOGITS, idx, (), "index")
    layer, _, rest = text.rpartition(":")
    layer = layer.strip()
    if not layer:
        raise NodeError(f"{text!r}: no layer name before ':' (LAYER:INDEX, e.g. logits:3 or conv2:7)")
    parts = [p.strip() for p in rest.split(",")]
    if layer == LOGITS and len(parts) == 1 and not re.fullmatch(r"-?\d+", parts[0]):
        idx = _class_index(parts[0], class_names or [])
        if idx is None:
            raise NodeError(f"{parts[0]!r} is not a class name of this model")
        return Node(LOGITS, idx, (), "index")
    try:
        index = int(parts[0])
    except ValueError:
        raise NodeError(f"{text!r}: the index after ':' must be an integer, got {parts[0]!r}") from None
    if layer == LOGITS:
        if len(parts) != 1:
            raise NodeError(f"{text!r}: logits take one index (logits:K)")
        return Node(LOGITS, index, (), "index")
    if len(parts) == 1:
        return Node(layer, index, (), "centre")
    if len(parts) == 2 and parts[1].lower() == "mean":
        return Node(layer, index, (), "mean")
    try:
        position = tuple(int(p) for p in parts[1:])
    except ValueError:
        raise NodeError(f"{text!r}: expected LAYER:C, LAYER:C,Y,X, LAYER:C,mean or LAYER:D,T") from None
    if len(position) not in (1, 2):
        raise NodeError(f"{text!r}: a position is Y,X (conv) or T (tokens)")
    return Node(layer, index, position, "unit")


def _named_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Run ``model`` once with hooks on every submodule: (name, module, output shape) per call, repeated calls as _k
    (shapes only: keeping every activation would hold the whole forward pass in memory)."""
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inp, out, name=name):
            k = counts.get(name, 0)
            counts[name] = k + 1
            if isinstance(out, torch.Tensor):
                calls.append((name if k == 0 else f"{name}_{k}", mod, tuple(out.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _num_nodes(shape: tuple[int, ...]) -> int:
    """Channels of a conv layer (C, H, W), features of a linear layer (F,) or of a token layer (T, D)."""
    if len(shape) == 2:
        return shape[1]
    return shape[0] if shape else 1


def list_layers(model: nn.Module, info: ModelInfo) -> list[LayerInfo]:
    """Every addressable layer in forward order, then ``logits``. Shapes are per example (no batch axis)."""
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(1, *info.input_size, device=param.device if param is not None else "cpu")
    layers = [LayerInfo(n, type(m).__name__, shape[1:], _num_nodes(shape[1:]))
              for n, m, shape in _named_calls(model, x)]
    layers.append(LayerInfo(LOGITS, "output", (info.num_classes,), info.num_classes))
    return layers


class NodeScore(nn.Module):
    """f_y(x) for a batch: the truncated network, then each chain's node. Output shape (B,).

    With several nodes (same layer, same kind), the batch is split into equal consecutive groups, one per node,
    so chains of different classes share every forward/backward pass.
    """

    def __init__(self, trunk: nn.Module, nodes: list[Node], out_shape: tuple[int, ...], log_softmax: bool = False
                 ) -> None:
        super().__init__()
        self.trunk, self.nodes, self.out_shape = trunk, nodes, out_shape
        if log_softmax and (nodes[0].layer != LOGITS or len(out_shape) != 1):
            raise NodeError(f"the log_softmax score needs output nodes (logits:K or a class name), not {nodes[0]}")
        self.log_softmax = log_softmax
        self.register_buffer("index", torch.tensor([n.index for n in nodes]), persistent=False)
        first = nodes[0]
        self.reduce, self.position = first.reduce, first.position
        if any((n.reduce, n.position) != (first.reduce, first.position) for n in nodes):
            raise NodeError("nodes sampled together must share their kind and position (e.g. all LAYER:C)")

    @property
    def node(self) -> Node:
        return self.nodes[0]

    def log_probability(self) -> NodeScore:
        """The same nodes scored by log p(y|x) = log_softmax(logits)_y instead of the logit f_y: bounded above by 0,
        and with T = 1 the tilted model p(y|x) q(x) is Bayes' rule's p(x|y) when q is the images' distribution."""
        score = NodeScore(self.trunk, self.nodes, self.out_shape, log_softmax=True)
        score.training = self.training  # this module's flag only: .train() would reach the shared network
        return score

    def chain_index(self, batch: int) -> torch.Tensor:
        """The node index of each chain: node k for chains [k * batch / len(nodes), (k+1) * batch / len(nodes))."""
        if batch % len(self.nodes):
            raise NodeError(f"{batch} chains do not split evenly over {len(self.nodes)} nodes")
        return self.index.repeat_interleave(batch // len(self.nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(x)
        if self.log_softmax:
            out = out.float().log_softmax(1)
        b = out.shape[0]
        idx = self.chain_index(b) if len(self.nodes) > 1 else self.index.expand(b)
        rows = torch.arange(b, device=out.device)
        if out.ndim == 2:  # (B, F): logits or a linear layer
            return out[rows, idx]
        if out.ndim == 3:  # (B, T, D): tokens
            return out[rows, self.position[0], idx] if self.position else out.mean(1)[rows, idx]
        if out.ndim == 4:  # (B, C, H, W)
            if self.reduce == "mean":
                return out.mean((2, 3))[rows, idx]
            y, xx = self.position if self.position else (out.shape[2] // 2, out.shape[3] // 2)
            return out[rows, idx, y, xx]
        return out.flatten(1)[rows, idx]

    def extra_repr(self) -> str:
        return f"nodes={[str(n) for n in self.nodes]}, out_shape={self.out_shape}" + \
            (", log_softmax" if self.log_softmax else "")


class _StopForward(Exception):
    pass


class _HookTrunk(nn.Module):
    """The network up to the ``call``-th call of ``module``: a forward hook stores its output and stops the pass."""

    def __init__(self, model: nn.Module, module: nn.Module, call: int) -> None:
        super().__init__()
        self.model, self.call = model, call
        self._module = [module]  # not a submodule: it is already inside self.model
        self._out: torch.Tensor | None = None
        self._count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._count, self._out = 0, None

        def hook(mod, inp, out):
            if self._count == self.call:
                self._out = out
                raise _StopForward
            self._count += 1

        handle = self._module[0].register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if self._out is None:
            raise NodeError(f"the layer was called {self._count} time(s), fewer than {self.call + 1}")
        out, self._out = self._out, None
        return out


class _FXTrunk(nn.Module):
    """An FX feature extractor that returns its single node's tensor instead of a dict."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)["out"]


def _fx_trunk(model: nn.Module, layer: str) -> nn.Module | None:
    """The FX-truncated network returning ``layer``'s output, or None when the model cannot be traced."""
    try:
        if hasattr(model, "pretrained_cfg"):  # timm: its extractor knows timm's untraceable leaf modules
            from timm.models import create_feature_extractor
        else:
            from torchvision.models.feature_extraction import create_feature_extractor
        graph = create_feature_extractor(model, return_nodes={layer: "out"})
    except Exception:  # FX tracing fails on data-dependent control flow; hooks handle those models
        return None
    return _FXTrunk(graph)


def node_score(model: nn.Module, info: ModelInfo, node: str | Node | list[str | Node], use_fx: bool = True
               ) -> NodeScore:
    """The score function of ``node`` (or of several nodes of one layer): an eval-mode module (B, ...) -> (B,).

    Parameters are frozen (``requires_grad_(False)``): sampling needs d f / d x only.
    """
    model.eval().requires_grad_(False)
    items = node if isinstance(node, list) else [node]
    if not items:
        raise NodeError("no node given")
    nodes = [n if isinstance(n, Node) else parse_node(n, info.class_names) for n in items]
    layer = nodes[0].layer
    if any(n.layer != layer for n in nodes):
        raise NodeError(f"nodes sampled together must be on one layer, got {sorted({n.layer for n in nodes})}")
    layers = {li.name: li for li in list_layers(model, info)}
    if layer not in layers:
        close = difflib.get_close_matches(layer, list(layers), n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"layers: {', '.join(list(layers)[:12])}, ..."
        raise NodeError(f"no layer {layer!r} in {info.model}; {hint} (gencnn nodes lists them all)")
    li = layers[layer]
    for n in nodes:
        check_node(n, li)
    if layer == LOGITS:
        return NodeScore(model, nodes, li.shape).eval()
    modules = dict(model.named_modules())
    base, call = layer, 0
    m = re.fullmatch(r"(.+)_(\d+)", layer)
    if m and m.group(1) in modules and layer not in modules:
        base, call = m.group(1), int(m.group(2))
    trunk = _fx_trunk(model, layer) if use_fx else None
    if trunk is None:
        trunk = _HookTrunk(model, modules[base], call)
    return NodeScore(trunk, nodes, li.shape).eval()


def check_node(n: Node, li: LayerInfo) -> None:
    """A NodeError unless ``n`` addresses a node of layer ``li`` (index, position and reduction in range)."""
    shape = li.shape
    if not 0 <= n.index < li.num_nodes:
        what = {1: "outputs", 2: "tokens' features", 3: "channels"}.get(len(shape), "nodes")
        what = "features" if len(shape) == 1 and li.name != LOGITS else what
        raise NodeError(f"index {n.index} out of range: {li.name} has {li.num_nodes} {what} (0-{li.num_nodes - 1})")
    if n.position:
        if len(shape) == 3 and len(n.position) == 2:
            for p, size, axis in zip(n.position, shape[1:], "YX"):
                if not 0 <= p < size:
                    raise NodeError(f"{axis}={p} out of range: {li.name} is {size} units along {axis} (0-{size - 1})")
        elif len(shape) == 2 and len(n.position) == 1:
            if not 0 <= n.position[0] < shape[0]:
                raise NodeError(f"token {n.position[0]} out of range: {li.name} has {shape[0]} tokens")
        else:
            raise NodeError(f"{li.name} has per-example shape {shape}: a position does not fit it")
    if n.reduce == "mean" and len(shape) != 3:
        raise NodeError(f"',mean' averages a conv channel over space; {li.name} has shape {shape}")
