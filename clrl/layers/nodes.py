"""The node view of a trunk: its nodes, their incoming groups and their outgoing weights.

A *node* is an output unit of a Linear layer or an output channel of a Conv2d layer (AGS-CL,
sec. 3.1). Its *incoming group* is its weight row / filter plus its bias, read and written as a
``(n_nodes, fan_in + 1)`` matrix. Its *outgoing weights* sit in the next Conv/Linear layer:

* conv -> conv: input channel ``u`` of the next conv (all out channels, all kernel taps);
* conv -> flatten -> linear: columns ``u*H*W .. (u+1)*H*W - 1`` (torch flattens C, H, W in order);
* linear -> linear: column ``u``;
* last layer -> heads: column ``u`` of every head Linear.

``u`` is the node's *post unit*: the unit of the activation's output it feeds. Width-preserving
activations have ``u = i``; maxout with block ``k`` maps nodes ``i`` to ``u = i // k``, so a
post unit's outgoing slice is shared by its ``k`` nodes and :func:`zero_outgoing` zeroes it
only when *all* of them are in the mask.

The *post-activation* of node ``i`` (what AGS-CL's Omega averages, eq. 8) is read from the output
of the last activation module after the layer (before the next Conv/Linear):

* ReLU / identity / norms / sT / GNC / LWTA (width-preserving): ``|y_i|``. For ReLU this is the
  paper's activation; LWTA losers and sT-suppressed units give exactly 0; GNC outputs are rarely
  exactly 0, so nodes followed by GNC are almost never unimportant.
* maxout: ``|y_u|`` if node ``i`` is the winner (first argmax) of its block for that input,
  else 0. The block members' values sum to ``|y_u|``; a node that never wins has Omega 0.

Supported: an ``nn.Sequential`` (nested plain Sequentials are flattened) of Conv2d (groups=1),
Linear, activation modules (anything with ``out_width``, torch activations and norms), pooling,
dropout and one Flatten between the conv part and the linear part. Anything else raises a
ValueError naming the module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "NodeLayer",
    "NodeActivity",
    "node_view",
    "get_incoming",
    "set_incoming",
    "zero_outgoing",
    "fresh_incoming",
]

_POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)
_DROPOUTS = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
_UNSUPPORTED_LEAVES = (nn.Unflatten, nn.Embedding, nn.Bilinear, nn.RNNBase, nn.MultiheadAttention)


@dataclass(eq=False)
class NodeLayer:
    """One Conv2d/Linear layer of a trunk seen as nodes (see the module docstring).

    ``post`` is the module whose forward output holds the post-activation; ``block`` nodes map
    to one post unit (maxout ``k``, else 1); ``maxout`` is the module whose input decides the
    winner of each block (None without maxout). ``next_module`` is the next Conv/Linear (None
    when the layer feeds the heads); ``out_kind`` names the boundary and ``spatial`` is H*W
    per channel for a conv -> flatten -> linear boundary (1 otherwise).
    """

    index: int
    name: str
    module: nn.Conv2d | nn.Linear
    kind: Literal["conv", "linear"]
    n_nodes: int
    post: nn.Module
    post_name: str
    post_width: int
    block: int
    maxout: nn.Module | None
    next_module: nn.Conv2d | nn.Linear | None = None
    next_name: str | None = None
    out_kind: Literal["conv", "flatten", "linear", "heads"] = "heads"
    spatial: int = 1
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    @property
    def fan_in(self) -> int:
        """Incoming weights per node (bias excluded)."""
        return self.module.weight[0].numel()

    @property
    def group_size(self) -> int:
        """Entries of one incoming group: fan_in plus one for the bias."""
        return self.fan_in + int(self.has_bias)

    def incoming(self) -> Tensor:
        """A detached copy of the incoming groups, ``(n_nodes, fan_in [+1 bias])``."""
        return get_incoming(self)

    def set_incoming(self, values: Tensor, rows: Tensor | None = None) -> None:
        set_incoming(self, values, rows)

    def unit_mask(self, node_mask: Tensor) -> Tensor:
        """Post units all of whose ``block`` nodes are in ``node_mask`` (bool, ``(post_width,)``)."""
        node_mask = torch.as_tensor(node_mask, dtype=torch.bool, device=self.module.weight.device)
        if node_mask.shape != (self.n_nodes,):
            raise ValueError(f"{self.name}: node mask must have shape ({self.n_nodes},), got {tuple(node_mask.shape)}")
        return node_mask.view(self.post_width, self.block).all(dim=1)

    def outgoing_weights(self, heads: nn.Module | None = None, tasks: Iterable[int] | None = None) -> list[Tensor]:
        """Views ``(rows, post_width, rest)`` of the weights that read this layer's post units:
        the next layer's weight, or (last layer) the weight of each head in ``tasks`` (default:
        every head of ``heads``, a :class:`~clrl.nets.MultiHead` or a single Linear)."""
        if self.next_module is not None:
            w = self.next_module.weight
            return [w.view(w.shape[0], self.post_width, -1)]
        if heads is None:
            return []
        if isinstance(heads, nn.Linear):
            linears = [heads]
        else:
            chosen = heads.tasks if tasks is None else [t for t in tasks if t in heads]
            linears = [heads.heads[t] for t in chosen]
        out = []
        for lin in linears:
            if lin.in_features != self.post_width:
                raise ValueError(f"head with in_features={lin.in_features} does not read {self.name}'s {self.post_width} units")
            out.append(lin.weight.view(lin.weight.shape[0], self.post_width, 1))
        return out


def get_incoming(layer: NodeLayer) -> Tensor:
    """Incoming groups as rows: ``[weight row / filter flattened, bias]``, a detached copy."""
    w = layer.module.weight.detach().reshape(layer.n_nodes, -1)
    if layer.module.bias is None:
        return w.clone()
    return torch.cat([w, layer.module.bias.detach().unsqueeze(1)], dim=1)


def set_incoming(layer: NodeLayer, values: Tensor, rows: Tensor | None = None) -> None:
    """Write incoming groups in place (all rows, or the rows selected by an index/bool tensor)."""
    mod = layer.module
    with torch.no_grad():
        w = mod.weight.view(layer.n_nodes, -1)
        if values.dtype != w.dtype:
            values = values.to(w.dtype)
        if values.shape[-1] != layer.group_size:
            raise ValueError(f"{layer.name}: groups have {layer.group_size} entries, got {values.shape[-1]}")
        if rows is None:
            w.copy_(values[:, : layer.fan_in])
            if mod.bias is not None:
                mod.bias.copy_(values[:, layer.fan_in])
        else:
            w[rows] = values[:, : layer.fan_in]
            if mod.bias is not None:
                mod.bias[rows] = values[:, layer.fan_in]


def zero_outgoing(
    layer: NodeLayer, mask: Tensor, heads: nn.Module | None = None, tasks: Iterable[int] | None = None
) -> None:
    """Zero the outgoing weights of the nodes in ``mask`` (bool ``(n_nodes,)``): their slice of
    the next layer, or of the heads in ``tasks`` (default all) for the trunk's last layer.

    Under maxout a post unit's slice is zeroed only when all its ``block`` nodes are masked."""
    units = layer.unit_mask(mask)
    if not units.any():
        return
    with torch.no_grad():
        for w in layer.outgoing_weights(heads, tasks):
            w[:, units] = 0


def fresh_incoming(layer: NodeLayer, generator: torch.Generator | None = None) -> Tensor:
    """Fresh incoming groups ``(n_nodes, group_size)`` from the layer's initializer (I.2).

    Default: PyTorch's Conv2d/Linear ``reset_parameters`` (kaiming_uniform with a=sqrt(5), bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn in the same order so that the same RNG state gives
    bit-identical values. A layer may carry its own ``clrl_init(weight, bias, generator)`` that
    fills the given tensors in place."""
    mod = layer.module
    device = generator.device if generator is not None else mod.weight.device  # draw where the RNG lives
    weight = torch.empty(mod.weight.shape, dtype=mod.weight.dtype, device=device)
    bias = torch.empty(mod.bias.shape, dtype=mod.bias.dtype, device=device) if mod.bias is not None else None
    custom = getattr(mod, "clrl_init", None)
    with torch.no_grad():
        if callable(custom):
            custom(weight, bias, generator)
        else:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            if bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(bias, -bound, bound, generator=generator)
    w = weight.reshape(layer.n_nodes, -1)
    out = w if bias is None else torch.cat([w, bias.unsqueeze(1)], dim=1)
    return out.to(mod.weight.device)


# ----------------------------------------------------------------------------- the walk


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def _contains_layer(m: nn.Module) -> bool:
    return any(_is_layer(s) for s in m.modules())


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Children in forward order; plain Sequentials holding layers are flattened."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module._modules.items():  # unlike named_children, keeps repeated modules
        if child is None:
            continue
        full = f"{prefix}{name}"
        if _is_layer(child) or not _contains_layer(child):
            out.append((full, child))
        elif isinstance(child, nn.Sequential):
            out.extend(_leaves(child, full + "."))
        else:
            raise ValueError(
                f"node_view: unsupported module '{full}' ({type(child).__name__}): only a plain Sequential of "
                "Conv2d/Linear, activations, pooling, dropout and Flatten is supported (no residual blocks)"
            )
    return out


def _is_activation(m: nn.Module) -> bool:
    if isinstance(m, _UNSUPPORTED_LEAVES) or (isinstance(m, nn.modules.conv._ConvNd)):
        return False
    if hasattr(m, "out_width") or isinstance(m, _NORMS):
        return True
    return next(m.parameters(), None) is None  # parameter-free: torch activations, Identity, ...


def _find_maxout(acts: list[nn.Module], block: int, name: str) -> nn.Module | None:
    """The single maxout among ``acts`` (and their submodules) that divides the width by ``block``."""
    if block == 1:
        return None
    shrinking = [
        m
        for a in acts
        for m in a.modules()
        if hasattr(m, "out_width") and hasattr(m, "block") and int(m.out_width(4 * m.block)) == 4
    ]
    if len(shrinking) != 1 or int(shrinking[0].block) != block:
        raise ValueError(f"node_view: activation '{name}' changes the width by {block} but not through one maxout with that block")
    return shrinking[0]


def node_view(trunk: nn.Module) -> list[NodeLayer]:
    """List the Conv2d/Linear layers of ``trunk`` as :class:`NodeLayer` s, in forward order."""
    if not isinstance(trunk, nn.Sequential):
        raise ValueError(f"node_view: expected an nn.Sequential trunk, got {type(trunk).__name__}")
    layers: list[NodeLayer] = []
    flattened = False
    cur: NodeLayer | None = None
    width = 0  # width of the current post-activation
    closed = False  # an activation after Flatten is not a node's post-activation
    seen_posts: set[int] = set()
    acts: list[nn.Module] = []  # activation modules since the current layer

    for name, m in _leaves(trunk):
        if _is_layer(m):
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise ValueError(f"node_view: grouped conv '{name}' (groups={m.groups}) is not supported")
                if flattened or (cur is not None and cur.kind == "linear"):
                    raise ValueError(f"node_view: Conv2d '{name}' after a Linear/Flatten is not supported")
                kind: Literal["conv", "linear"] = "conv"
                n_in, n_out = m.in_channels, m.out_channels
            else:
                if cur is not None and cur.kind == "conv" and not flattened:
                    raise ValueError(f"node_view: Linear '{name}' follows Conv2d '{cur.name}' without nn.Flatten")
                kind = "linear"
                n_in, n_out = m.in_features, m.out_features
            if cur is not None:
                _close(cur, m, name, n_in, width, flattened)
            cur = NodeLayer(
                index=len(layers), name=name, module=m, kind=kind, n_nodes=n_out, post=m, post_name=name,
                post_width=n_out, block=1, maxout=None,
            )
            layers.append(cur)
            width, closed, acts = n_out, False, []
        elif isinstance(m, nn.Flatten):
            flattened, closed = True, True
        elif isinstance(m, _POOLS + _DROPOUTS):
            if isinstance(m, _POOLS) and (flattened or (cur is not None and cur.kind == "linear")):
                raise ValueError(f"node_view: pooling '{name}' after Linear/Flatten is not supported")
        elif _is_activation(m):
            if cur is None:
                continue  # an input transform before the first layer
            if closed:
                raise ValueError(f"node_view: activation '{name}' between Flatten and Linear is not supported")
            if id(m) in seen_posts:
                raise ValueError(f"node_view: module '{name}' is used twice; give every layer its own activation")
            new_width = int(m.out_width(width)) if hasattr(m, "out_width") else width
            if new_width <= 0 or cur.n_nodes % new_width:
                raise ValueError(f"node_view: activation '{name}' maps {cur.n_nodes} nodes to {new_width} units")
            acts.append(m)
            cur.post, cur.post_name, cur.post_width = m, name, new_width
            cur.block = cur.n_nodes // new_width
            cur.maxout = _find_maxout(acts, cur.block, name)
            width = new_width
            seen_posts.add(id(m))
        else:
            raise ValueError(f"node_view: unsupported module '{name}' ({type(m).__name__})")
    if not layers:
        raise ValueError("node_view: the trunk has no Conv2d/Linear layer")
    out_features = getattr(trunk, "out_features", None)
    if out_features is not None and layers[-1].kind == "linear" and int(out_features) != layers[-1].post_width:
        raise ValueError(f"node_view: trunk.out_features={out_features} but the last layer has {layers[-1].post_width} units")
    return layers


def _close(cur: NodeLayer, nxt: nn.Module, nxt_name: str, n_in: int, width: int, flattened: bool) -> None:
    """Record where ``cur``'s outgoing weights sit in ``nxt``."""
    cur.next_module, cur.next_name = nxt, nxt_name  # type: ignore[assignment]
    if cur.kind == "conv" and isinstance(nxt, nn.Linear):
        if n_in % width:
            raise ValueError(f"node_view: Linear '{nxt_name}' has {n_in} inputs, not a multiple of {cur.name}'s {width} channels")
        cur.out_kind, cur.spatial = "flatten", n_in // width
    else:
        if n_in != width:
            raise ValueError(f"node_view: '{nxt_name}' expects {n_in} inputs but '{cur.post_name}' gives {width}")
        cur.out_kind = "conv" if cur.kind == "conv" else "linear"


# ----------------------------------------------------------------------------- activity


class NodeActivity:
    """Mean absolute post-activation per node over the forward passes run inside ``with``.

    Conv nodes average over samples and spatial positions; maxout credits the block's output to
    its winner only (module docstring). ``mean()`` returns one ``(n_nodes,)`` tensor per layer:
    the new term of AGS-CL's Omega update, eq. (8)."""

    def __init__(self, layers: Sequence[NodeLayer]) -> None:
        self.layers = list(layers)
        self._sums = [torch.zeros(lay.n_nodes, dtype=torch.float64) for lay in self.layers]
        self._counts = [0 for _ in self.layers]
        self._winners: list[Tensor | None] = [None for _ in self.layers]
        self._handles: list = []

    def __enter__(self) -> NodeActivity:
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.post.register_forward_hook(self._post_hook(i)))
            if layer.maxout is not None:
                self._handles.append(layer.maxout.register_forward_pre_hook(self._maxout_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _maxout_hook(self, i: int):
        block = self.layers[i].block

        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            shape = (x.shape[0], x.shape[1] // block, block) + tuple(x.shape[2:])
            idx = x.reshape(shape).argmax(dim=2, keepdim=True)
            win = torch.zeros(shape, dtype=torch.bool, device=x.device).scatter_(2, idx, True)
            self._winners[i] = win.reshape(x.shape)

        return hook

    def _post_hook(self, i: int):
        layer = self.layers[i]

        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            a = out.detach().abs()
            if a.shape[1] != layer.post_width:
                raise ValueError(f"{layer.post_name}: output has {a.shape[1]} units, expected {layer.post_width}")
            if layer.block > 1:
                win = self._winners[i]
                if win is None:
                    raise RuntimeError(f"{layer.post_name}: maxout winners were not recorded")
                a = a.repeat_interleave(layer.block, dim=1) * win
                self._winners[i] = None
            dims = [0] + list(range(2, a.dim()))
            self._sums[i] += a.sum(dim=dims).to(torch.float64).cpu()
            self._counts[i] += a.numel() // a.shape[1]

        return hook

    @property
    def count(self) -> int:
        """Samples x positions seen by the first layer (0 before any forward)."""
        return self._counts[0] if self._counts else 0

    def mean(self) -> list[Tensor]:
        """Per layer, float32 ``(n_nodes,)`` means (zeros if nothing was recorded)."""
        return [(s / max(c, 1)).to(torch.float32) for s, c in zip(self._sums, self._counts, strict=True)]
