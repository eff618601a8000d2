"""The shared layer library: competitive activations, their spec registry, VCL, the node view."""

from .competitive import (
    GNC,
    LWTA,
    BatchNorm,
    GroupNorm,
    Identity,
    LayerNorm,
    Maxout,
    ReLU,
    SparseTransform,
)
from .nodes import (
    NodeActivity,
    NodeLayer,
    fresh_incoming,
    get_incoming,
    node_view,
    set_incoming,
    zero_outgoing,
)
from .registry import ACTIVATION_NAMES, ActivationChain, build_activation, parse_spec
from .vcl import VCL

__all__ = [
    "ACTIVATION_NAMES",
    "ActivationChain",
    "BatchNorm",
    "GNC",
    "GroupNorm",
    "Identity",
    "LWTA",
    "LayerNorm",
    "Maxout",
    "ReLU",
    "SparseTransform",
    "VCL",
    "build_activation",
    "parse_spec",
    "NodeActivity",
    "NodeLayer",
    "fresh_incoming",
    "get_incoming",
    "node_view",
    "set_incoming",
    "zero_outgoing",
]
