"""The per-branch accuracy-aware INT8 loop on the reference teacher, with real quantizers and runtimes."""

import onnx
import pytest

from edgekit.data import FeedDataset, load_split
from edgekit.evaluation import evaluate
from edgekit.loading import load_model
from edgekit.quant.accuracy_aware import accuracy_aware, layer_sqnr, quant_units
from edgekit.quant.backends import OnnxQDQBackend
from edgekit.quant.calibration import calibration_set
from edgekit.quant.onnx_qdq import quantize_qdq
from edgekit.runtimes import onnx_runner, predict_fn
from edgekit.targets.onnx import export_onnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_onnx(reference_teacher, tmp_path_factory):
    loaded = load_model(reference_teacher)
    return export_onnx(loaded.model, loaded.io, tmp_path_factory.mktemp("aa") / "m.onnx", slim=True), loaded.io


def test_units_are_labelled_by_branch(teacher_onnx):
    path, _ = teacher_onnx
    units = quant_units(onnx.load(str(path)))
    assert {u.branch for u in units} == {"image", "text", "audio", "fusion"}
    assert all(u.scope for u in units)


def test_loop_keeps_the_sensitive_branch_in_float(teacher_onnx, tmp_path):
    """Quantizing every op (not just Conv/MatMul/Gemm) costs accuracy; the loop must win it back by keeping
    the most sensitive parts in float, measured in onnxruntime on real val samples."""
    path, io = teacher_onnx
    val_full = load_split("avdigits", "val")
    val = FeedDataset(range(300), val_full.__getitem__, "val[:300]")
    calib = calibration_set(io, load_split("avdigits", "train"), 64)
    backend = OnnxQDQBackend(path, io, calib, op_types=())

    def accuracy(predict):
        return evaluate(predict, io, val, per_modality=False).overall.accuracy

    def rank():
        quantize_qdq(path, tmp_path / "full.onnx", calib, op_types=())
        return layer_sqnr(path, tmp_path / "full.onnx", calib, n=16)

    baseline = accuracy(predict_fn(onnx_runner(path, io)))
    units = quant_units(onnx.load(str(path)), op_types=())
    report = accuracy_aware(backend, units, accuracy, baseline, 0.0, tmp_path, rank)
    assert report.fits and report.trials[0].float_parts == ()
    if report.trials[0].drop > 0:  # the loop ran: sensitivities, a float set, and a final trial that fits
        assert set(report.branch_drop) == {"image", "text", "audio", "fusion"}
        assert report.float_nodes and any(t.drop <= 0.0 for t in report.trials[1:])
        assert report.layer_sqnr == sorted(report.layer_sqnr, key=lambda x: x[2])
        assert "branch quantized alone" in report.table()
