"""The per-branch accuracy-aware INT8 loop on the reference teacher, with real quantizers and runtimes."""

import dataclasses

import numpy as np
import onnx
import pytest

from edgekit.branches import discover
from edgekit.data import FeedDataset, load_split
from edgekit.evaluation import evaluate
from edgekit.loading import load_model
from edgekit.quant.accuracy_aware import accuracy_aware, layer_sqnr, quant_units
from edgekit.quant.backends import OnnxQDQBackend
from edgekit.quant.calibration import calibration_set
from edgekit.quant.onnx_qdq import CPU, TENSORRT, quantize_qdq
from edgekit.runtimes import onnx_runner, predict_fn
from edgekit.targets.onnx import export_onnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_onnx(reference_teacher, tmp_path_factory):
    loaded = load_model(reference_teacher)
    return export_onnx(loaded.model, loaded.io, tmp_path_factory.mktemp("aa") / "m.onnx", slim=True), loaded.io


def test_units_are_labelled_by_branch(teacher_onnx):
    """Branches come from the graph (reachability from each modality's inputs), not from the zoo's names; they
    agree with the zoo's module tree: every unit under branches.<m> is in branch m."""
    path, io = teacher_onnx
    graph = onnx.load(str(path))
    branches = discover(graph, io)
    assert branches.method == "graph reachability"
    assert branches.labels == {"image": "image (branches.image)", "text": "text (branches.text)",
                               "audio": "audio (branches.audio)", "fusion": "fusion"}  # fmt: skip
    units = quant_units(graph, branches)
    assert {u.branch for u in units} == {"image", "text", "audio", "fusion"}
    assert all(u.scope for u in units)
    for u in units:
        if u.scope.startswith("branches."):
            assert u.branch == u.scope.split(".")[1], u
    override = discover(graph, io, {"vision": ["branches.image"], "rest": ["branches.text", "branches.audio"]})
    assert override.method == "edgekit-model.yaml branches" and set(override.names()) == {"vision", "rest", "fusion"}


def test_loop_keeps_the_sensitive_branch_in_float(teacher_onnx, tmp_path):
    """Quantizing every op (not just Conv/MatMul/Gemm) costs accuracy; the loop must win it back by keeping
    the most sensitive parts in float, measured in onnxruntime on real val samples."""
    path, io = teacher_onnx
    val_full = load_split("avdigits", "val")
    val = FeedDataset(range(300), val_full.__getitem__, "val[:300]")
    calib = calibration_set(io, load_split("avdigits", "train"), 64)
    every_op = dataclasses.replace(CPU, op_types=())
    backend = OnnxQDQBackend(path, io, calib, every_op)

    def accuracy(predict):
        return evaluate(predict, io, val, per_modality=False).overall.accuracy

    def rank():
        quantize_qdq(path, tmp_path / "full.onnx", calib, scheme=every_op)
        return layer_sqnr(path, tmp_path / "full.onnx", calib, n=16)

    baseline = accuracy(predict_fn(onnx_runner(path, io)))
    graph = onnx.load(str(path))
    units = quant_units(graph, discover(graph, io), op_types=())
    report = accuracy_aware(backend, units, accuracy, baseline, 0.0, tmp_path, rank)
    assert report.fits and report.trials[0].float_parts == ()
    if report.trials[0].drop > 0:  # the loop ran: sensitivities, a float set, and a final trial that fits
        assert set(report.branch_drop) == {"image", "text", "audio", "fusion"}
        assert report.float_nodes and any(t.drop <= 0.0 for t in report.trials[1:])
        assert report.layer_sqnr == sorted(report.layer_sqnr, key=lambda x: x[2])
        assert "branch quantized alone" in report.table()


@pytest.mark.parametrize("scheme", [CPU, TENSORRT], ids=lambda s: s.name)
def test_qdq_schemes_keep_the_attention_mask_in_float(teacher_onnx, tmp_path, scheme):
    """The text branch's -inf mask fill has no INT8 scale: the nodes carrying it are found and kept in float, every
    Q/DQ scale is finite, and each scheme has its own activation type (uint8 for onnxruntime on CPUs, symmetric
    int8 for TensorRT)."""
    path, io = teacher_onnx
    calib = calibration_set(io, load_split("avdigits", "train"), 32)
    info = quantize_qdq(path, tmp_path / "q.onnx", calib, scheme=scheme)
    assert info["scheme"] == scheme.name and "node_masked_fill" in info["unbounded"]
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    init = {i.name: i for i in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    bad = [n.name for n in qdq if not np.isfinite(onnx.numpy_helper.to_array(init[n.input[1]])).all()]
    assert not bad  # an inf scale is what quantizing the mask would leave
    activation_zp = {init[n.input[2]].data_type for n in qdq if n.op_type == "QuantizeLinear"}
    uint8, int8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    assert activation_zp == ({int8} if scheme.symmetric_activations else {uint8})
