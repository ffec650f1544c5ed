"""Weight stripping: a graph-only copy of an ONNX model, small enough to upload, naming no file.

Every initializer keeps its name, dims and data type; its values go, except for small
shape-like constants that shape inference needs. `leti.frontend.graph` uses the same helpers
to build the weight-free copy it hands to ONNX's shape inference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto

from leti.frontend.shapes import numel

# Small tensors keep their values when weights are stripped: shape inference needs Reshape
# targets, axes, pads, Resize scales and the like, and they reveal nothing about the weights.
_KEEP_INT_ELEMENTS = 64
_KEEP_FLOAT_ELEMENTS = 8
_INT_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8})
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16})


def _keeps_values(t: TensorProto) -> bool:
    """Whether a stripped copy keeps this tensor's values (small shape-like constants only)."""
    if t.data_location == TensorProto.EXTERNAL:
        return False
    n = numel(t.dims)
    if len(t.raw_data) > 8 * max(n, 1):  # dims that lie about the payload
        return False
    if t.data_type in _INT_TYPES:
        return n <= _KEEP_INT_ELEMENTS
    if t.data_type in _FLOAT_TYPES:
        return n <= _KEEP_FLOAT_ELEMENTS
    return False


def _strip_tensor_into(src: TensorProto, dst: TensorProto) -> None:
    """Copy name, dims and type; values only for small shape-like constants; never a location."""
    if _keeps_values(src):
        dst.CopyFrom(src)
        dst.ClearField("external_data")
        dst.ClearField("data_location")
        return
    dst.name = src.name
    dst.data_type = src.data_type
    dst.dims.extend(src.dims)


def strip_initializers_into(src: onnx.GraphProto, dst: onnx.GraphProto) -> None:
    """Stripped copies of all initializers; a sparse one becomes a dense stub of its shape."""
    for t in src.initializer:
        _strip_tensor_into(t, dst.initializer.add())
    for sp in src.sparse_initializer:
        stub = dst.initializer.add()
        stub.name = sp.values.name
        stub.data_type = sp.values.data_type
        stub.dims.extend(sp.dims)


def strip_constant_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    """Drop the payload of big `Constant` tensors (some exporters store weights that way)."""
    for node in nodes:
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR and not _keeps_values(a.t):
                stripped = TensorProto()
                _strip_tensor_into(a.t, stripped)
                a.t.CopyFrom(stripped)


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == 3


def _copy_fields(src: Any, dst: Any, skip: frozenset[str]) -> None:
    """Copy every set field of a message except those in `skip` (the weights, say)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if _is_repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A graph-only copy for uploads: every initializer keeps name, dims and data type.

    Weight values are dropped and no external-data entries survive, so the copy is small and
    names no file; sparse initializers become dense stubs of their shape. Small integer
    tensors (<= 64 values: Reshape targets, axes, pads) and tiny float ones (<= 8 values:
    Resize scales, Clip bounds) keep their values, because the server needs them to infer
    shapes. Large `Constant` node tensors are stripped the same way.
    """
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=frozenset({"graph"}))
    if model.HasField("graph"):
        _copy_fields(model.graph, out.graph, skip=frozenset({"initializer", "sparse_initializer"}))
        strip_initializers_into(model.graph, out.graph)
        strip_constant_nodes(out.graph.node)
    return out
