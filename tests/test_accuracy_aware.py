"""The per-branch accuracy-aware INT8 loop on the reference teacher, with real quantizers and runtimes. The search is
tested deterministically: an activation outlier, inserted without changing what the float model computes, makes a
known branch INT8-hostile."""

import numpy as np
import onnx
import pytest

from edgekit.branches import Branches, ModuleBranches, discover
from edgekit.data import FeedDataset, load_split
from edgekit.data.calibration import calibration_set
from edgekit.errors import EdgeKitError
from edgekit.evaluation import evaluate
from edgekit.hardware import resolve_profile
from edgekit.loading import load_model
from edgekit.quant.accuracy_aware import BudgetError, accuracy_aware, layer_sqnr, quant_units
from edgekit.quant.backends import Int8Job, OnnxQDQBackend, find_float_nodes
from edgekit.quant.onnx_qdq import CPU, CPU_NO_VNNI, TENSORRT, quantize_qdq
from edgekit.runtimes import onnx_runner, predict_fn
from edgekit.targets.onnx import export_onnx, module_scope
from edgekit.tasks import CLASSIFICATION, Gate

pytestmark = pytest.mark.slow
# The searches quantize with 7-bit weights (x86-avx2's scheme): onnxruntime's INT8 kernels then compute the exact sums
# on every x86 CPU, with VNNI or without, so a trial's accuracy, and what the search decides, is the same on each class
# (8-bit weights saturate the pair sums where there is no VNNI: other logits, another search; tests/test_isa.py).
SCHEME, PROFILE = CPU_NO_VNNI, "x86-avx2"
POINT = Gate("accuracy", True, 1.0)  # one point of accuracy


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


def outlier_channel(graph: onnx.ModelProto, node_name: str, scale: float = 1000.0) -> None:
    """Make one layer INT8-hostile without changing what the float model computes: multiply channel 0 of the layer's
    input by `scale` (a Mul before it) and divide the weights that read that channel by it. The input's per-tensor
    INT8 scale then spans the outlier, and every other channel rounds to zero, as in a real model with an
    activation outlier (the case SmoothQuant addresses)."""
    node = next(n for n in graph.graph.node if n.name == node_name)
    init = {i.name: i for i in graph.graph.initializer}
    w = onnx.numpy_helper.to_array(init[node.input[1]]).copy()
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    k = w.shape[1] if trans_b else w.shape[0]
    if trans_b:
        w[:, 0] /= scale
    else:
        w[0] /= scale
    init[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(w, node.input[1]))
    factor = np.ones(k, np.float32)
    factor[0] = scale
    graph.graph.initializer.append(onnx.numpy_helper.from_array(factor, f"{node_name}_outlier"))
    scaled = f"{node_name}_outlier_input"
    mul = onnx.helper.make_node("Mul", [node.input[0], f"{node_name}_outlier"], [scaled], f"{node_name}_outlier_mul")
    node.input[0] = scaled
    nodes = list(graph.graph.node)
    graph.graph.ClearField("node")
    graph.graph.node.extend([*nodes[: nodes.index(node)], mul, *nodes[nodes.index(node) :]])


def last_layer(graph: onnx.ModelProto, io, branch: str) -> str:
    """The last Gemm or MatMul with a weight initializer in `branch`."""
    weights = {i.name for i in graph.graph.initializer}
    of_node = discover(graph, io).of_node
    return [n.name for n in graph.graph.node
            if n.op_type in ("Gemm", "MatMul") and n.input[1] in weights and of_node[n.name] == branch][-1]  # fmt: skip


@pytest.fixture(scope="module")
def hostile(teacher_onnx, tmp_path_factory):
    """The teacher with an activation outlier before the audio branch's projection (node_linear_18): the float
    model is unchanged, INT8 of that one layer ruins the audio branch."""
    path, io = teacher_onnx
    graph = onnx.load(str(path))
    outlier_channel(graph, "node_linear_18")
    out = tmp_path_factory.mktemp("aa") / "hostile.onnx"
    onnx.save(graph, str(out))
    val = FeedDataset(range(300), load_split("avdigits", "val").__getitem__, "val[:300]")
    return out, io, val, calibration_set(io, load_split("avdigits", "train"), 64)


def test_search_finds_the_hostile_branch(hostile, teacher_onnx, tmp_path):
    """Full INT8 misses the budget; the sensitivity names audio alone; floating audio fits, and nothing of another
    branch stays float."""
    path, io, val, calib = hostile
    backend = OnnxQDQBackend(Int8Job(None, io, path, calib, resolve_profile(PROFILE)[0]), SCHEME)

    def accuracy(predict):
        return evaluate(predict, io, val, per_modality=False).overall.accuracy

    baseline = accuracy(predict_fn(onnx_runner(path, io)))
    assert baseline == accuracy(predict_fn(onnx_runner(teacher_onnx[0], io)))  # the float model is unchanged
    graph = onnx.load(str(path))
    units = quant_units(graph, discover(graph, io))

    def rank():
        quantize_qdq(path, tmp_path / "full.onnx", calib, scheme=SCHEME)
        return layer_sqnr(path, tmp_path / "full.onnx", calib, n=16)

    report = accuracy_aware(backend, units, accuracy, baseline, POINT, tmp_path, rank)
    assert report.trials[0].float_parts == () and report.trials[0].drop > 10
    assert max(report.branch_drop, key=report.branch_drop.get) == "audio" and report.branch_drop["audio"] > 10
    assert all(d <= 1.0 for b, d in report.branch_drop.items() if b != "audio"), report.branch_drop
    assert report.trials[1].float_parts == ("audio",) and report.trials[1].drop <= 1.0
    # What stays float is the hostile layer and no node of another branch. (The layer refinement ranks by SQNR, an
    # energy ratio: the outlier channel dominates it, so this layer's SQNR looks fine and the whole branch stays.)
    audio = {u.node for u in units if u.branch == "audio"}
    assert report.fits and "node_linear_18" in report.float_nodes and set(report.float_nodes) <= audio


def test_budget_error_carries_the_sensitivity_table(hostile, tmp_path):
    """With an outlier in every part, every trial leaves a hostile part in INT8 (all in float is not INT8):
    BudgetError (exit 1) names the worst part and carries the measured table."""
    path, io, val, calib = hostile
    graph = onnx.load(str(path))
    image, audio, head = (last_layer(graph, io, b) for b in ("image", "audio", "fusion"))
    for node in (image, head):  # at 1000x, floating vision and sound left fusion 0.33 points off with 7-bit weights
        outlier_channel(graph, node, 1e5)
    onnx.save(graph, str(tmp_path / "worse.onnx"))
    backend = OnnxQDQBackend(Int8Job(None, io, tmp_path / "worse.onnx", calib, resolve_profile(PROFILE)[0]), SCHEME)

    def accuracy(predict):
        return evaluate(predict, io, val, per_modality=False).overall.accuracy

    baseline = accuracy(predict_fn(onnx_runner(tmp_path / "worse.onnx", io)))
    # Three parts, each with an outlier (text, which the others outvote, joins the fusion part).
    scope = {n.name: module_scope(n) for n in graph.graph.node}
    parts = discover(graph, io, {"vision": ["branches.image", scope[image]], "sound": ["branches.audio", scope[audio]]})
    units = quant_units(graph, parts)
    with pytest.raises(BudgetError) as e:
        accuracy_aware(backend, units, accuracy, baseline, POINT, tmp_path / "w")
    assert e.value.exit_code == 1 and "most sensitive branch" in str(e.value)
    table = e.value.details["sensitivity"]
    assert not table["fits"] and min(t["drop"] for t in table["trials"]) > 1.0
    assert set(table["branch_drop"]) == {"vision", "sound", "fusion"} and min(table["branch_drop"].values()) > 1.0


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


def test_search_against_a_reference_the_float_model_already_misses_stops_first(hostile, tmp_path):
    """One reference: a compress run's search measures drops against the teacher. When the float model it
    quantizes already loses more than the budget there (pruning and distillation spent it), no exclusion can win it
    back, and the search says so before any trial."""
    path, io, val, calib = hostile
    job = Int8Job(None, io, path, calib, resolve_profile(PROFILE)[0])
    float_accuracy = evaluate(predict_fn(onnx_runner(path, io)), io, val, per_modality=False).overall.accuracy
    with pytest.raises(EdgeKitError, match=r"the float model is already 2 points worse on val than the reference"):
        find_float_nodes(OnnxQDQBackend(job, SCHEME), job, val, POINT, CLASSIFICATION, tmp_path,
                         reference=float_accuracy + 0.02)  # fmt: skip
    assert not list(tmp_path.glob("trial-*"))


def test_a_container_of_several_branches_is_no_branch_root():
    """The encoders' ModuleDict votes for its largest encoder (text); floating that branch by its roots must not
    float the others with it (PT2E's fallback floats a failing branch by them)."""
    of_module = {"branches": "text", "branches.text": "text", "branches.text.enc": "text", "branches.image": "image",
                 "fusion": "fusion", "fusion.proj.1": "text"}  # fmt: skip
    mb = ModuleBranches(Branches({}, "graph reachability", {}), of_module, frozenset())
    assert mb.roots() == {"text": ["branches.text", "fusion.proj.1"], "image": ["branches.image"]}


@pytest.mark.openvino
def test_openvino_floats_an_overridden_branch_whole(reference_teacher, teacher_onnx, tmp_path):
    """A package's `branches:` override renames the branches; OpenVINO labels its ops by the ONNX nodes they keep
    and the rest by reachability, so floating the renamed audio branch leaves none of its ops quantized: its
    normalisations and the ops OpenVINO named itself included, not only the search's units."""
    import openvino as ov

    from edgekit.quant.backends import OpenVINOBackend, ov_branches
    from edgekit.runtimes.openvino import convert_onnx

    path, io = teacher_onnx
    override = {"vision": ["branches.image"], "speech": ["branches.audio"], "words": ["branches.text"]}
    calib = calibration_set(io, load_split("avdigits", "train"), 16)
    job = Int8Job(load_model(reference_teacher).model, io, path, calib, resolve_profile("x86")[0], override)
    ops = ov_branches(convert_onnx(path), io, job.branches)
    assert set(ops.values()) == {"vision", "speech", "words", "fusion"}
    speech = {op for op, b in ops.items() if b == "speech"}
    assert any(not op.startswith("node_") for op in speech)  # ops OpenVINO named itself are labelled too
    OpenVINOBackend(job).quantize(frozenset(u.node for u in job.units if u.branch == "speech"), tmp_path / "q")
    quantized = ov.Core().read_model(str(tmp_path / "q" / "model.xml")).get_ordered_ops()

    def reads_fake_quantize(op) -> bool:
        return any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())

    read = {op.get_friendly_name() for op in quantized if reads_fake_quantize(op)}
    assert read and not read & speech  # the other branches are INT8; nothing of speech reads an INT8 tensor
