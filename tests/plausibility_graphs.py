"""Small ONNX graphs for the plausibility suite, built with onnx.helper (graph-only: weights
are declared with their shapes, their values never matter to the estimator)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(name: str, shape: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def separable_net(batch: int = 1, size: int = 224, width: int = 32, blocks: int = 4):
    """Conv stem, then depthwise 3x3 + pointwise 1x1 blocks with ReLU, global pool, FC."""
    nodes, inits = [], []
    c = width
    inits.append(_weight("w0", [c, 3, 3, 3]))
    nodes += [
        helper.make_node("Conv", ["x", "w0"], ["s0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["s0"], ["a0"]),
    ]
    prev = "a0"
    for i in range(blocks):
        inits += [_weight(f"dw{i}", [c, 1, 3, 3]), _weight(f"pw{i}", [c * 2, c, 1, 1])]
        nodes += [
            helper.make_node("Conv", [prev, f"dw{i}"], [f"d{i}"], pads=[1, 1, 1, 1], group=c),
            helper.make_node("Relu", [f"d{i}"], [f"dr{i}"]),
            helper.make_node("Conv", [f"dr{i}", f"pw{i}"], [f"p{i}"]),
            helper.make_node("Relu", [f"p{i}"], [f"pr{i}"]),
        ]
        prev, c = f"pr{i}", c * 2
    inits += [_weight("fc", [c, 10])]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("MatMul", ["fl", "fc"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])
    return _model(nodes, [x], [y], inits)


def fully_connected(k: int, n: int, rows: int = 1):
    """One MatMul of [rows, k] by a [k, n] weight."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return _model([node], [x], [y], [_weight("w", [k, n])])


def elementwise_only(size: int = 64):
    """Add, Relu and Softmax on activations only: nothing a measured kernel family covers."""
    shape = [1, 16, size, size]
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], axis=1),
    ]
    return _model(nodes, [a, b], [y], [])
