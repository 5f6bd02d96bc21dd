"""TensorRT target: the static op check (parser and DLA), the bundle and its build scripts, and the refusals
on a machine without TensorRT. Tests marked `tensorrt` build and run real engines; they skip here and run
as-is on a Jetson or a GPU host with TensorRT (and cuda-python) installed."""

import ast
import importlib.util
import json
import py_compile
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import load_artifact
from edgekit.data import AVDigitsConfig
from edgekit.data.avdigits import io_spec
from edgekit.errors import EdgeKitError, UsageError
from edgekit.formats import load_runner
from edgekit.hardware import HardwareProfile, profile_names, resolve_profile
from edgekit.io import DimRange, IOSpec, TensorSpec
from edgekit.models import build_fusion_model
from edgekit.targets.onnx import export_onnx
from edgekit.targets.tensorrt import build_engine, gpu_visible, optimization_profile, write_bundle
from edgekit.targets.tensorrt_ops import ROW_HEADER, TABLES, check_onnx, report_rows

from .conftest import ROOT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
BUNDLE_FILES = {"model.onnx", "build_engine.py", "build_engine.sh", "edgekit_agent.py", "profile.json",
                "op_report.json", "manifest.json"}  # fmt: skip


def _profile(name: str, tensorrt: str, jetpack: str, dla_cores: int = 0) -> HardwareProfile:
    dla = [{"kind": "dla", "count": dla_cores, "peak_tops": {"int8": 10.0}, "precisions": ["fp16", "int8"]}]
    return HardwareProfile.model_validate({
        "name": name, "description": "test profile", "kind": "gpu",
        "exports": [{"format": "tensorrt", "precision": "fp16"}], "runtime": "tensorrt",
        "precisions": ["fp32", "fp16", "int8"], "peak_tops": {"fp32": 1.0, "fp16": 2.0, "int8": 4.0},
        "memory_bandwidth_gbs": 68.0, "ram_gb": 8.0, "threads": 6, "launch_overhead_us": 5.0,
        "software": {"jetpack": jetpack, "tensorrt": tensorrt, "cuda": "12.6"},
        "accelerators": dla if dla_cores else [], "budgets": {},
    })  # fmt: skip


ORIN_NANO = _profile("orin-nano-test", "10.3.0", "6.1")
ORIN_NX = _profile("orin-nx-test", "10.3.0", "6.1", dla_cores=2)
XAVIER_NX = _profile("xavier-nx-test", "8.5.2", "5.1.2", dla_cores=2)


@pytest.fixture(scope="module")
def io():
    return io_spec(AVDigitsConfig(), 41)


@pytest.fixture(scope="module")
def fusion_onnx(io, tmp_path_factory) -> Path:
    """The small attention-fusion zoo model over image + text + audio, exported as EdgeKit exports it."""
    model = build_fusion_model(
        arch="attention", preset="small", modalities=["image", "text", "audio"], vocab_size=41, max_len=32
    )
    return export_onnx(model, io, tmp_path_factory.mktemp("trt") / "model.onnx")


@pytest.fixture(scope="module")
def fusion_model(fusion_onnx) -> onnx.ModelProto:
    return onnx.load(str(fusion_onnx))


def _model(nodes, inputs, outputs, inits=(), opset=18, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=ops)


def _x(name="X", shape=(1, 8, 16, 16), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def _status(report, op):
    return {n.status for n in report.nodes if n.op_type == op}


# -- the parser check --------------------------------------------------------------------------------------------


def test_fusion_model_parses_on_trt10_3(fusion_model):
    report = check_onnx(fusion_model, "10.3.0", dla=False)
    assert report.parses and report.opset == 18 and report.trt_version == "10.3"
    assert {n.status for n in report.nodes} == {"ok"}
    ops = report.op_counts()
    for op in ("Conv", "Gemm", "MatMul", "LayerNormalization", "Softmax", "Gather", "Erf", "Where"):
        assert ops.get(op, 0) > 0, op
    assert report.to_dict()["counts"] == {"ok": len(fusion_model.graph.node)}


def test_fusion_model_cannot_parse_on_trt8_5(fusion_model):
    """TensorRT 8.5 (JetPack 5, Xavier NX) has no LayerNormalization and stops at opset 17."""
    report = check_onnx(fusion_model, "8.5.2", dla=False)
    assert not report.parses
    assert {n.op_type for n in report.unsupported} == {"LayerNormalization"}
    assert all("marked unsupported (N)" in n.reason for n in report.unsupported)
    assert any("opset 18" in i and "17" in i for i in report.model_issues)
    assert any("INT64" in n and "INT32" in n for n in report.model_notes)  # text_ids bind as int32 there


def test_unsupported_and_custom_ops_are_reported():
    det = helper.make_node("Det", ["X"], ["Y"], name="det")
    model = _model([det], [_x(shape=(2, 3, 3))], [_x("Y", (2,))])
    for version in TABLES:
        [node] = check_onnx(model, version, dla=False).nodes
        assert node.status == "unsupported" and "Det" in node.reason and "(N)" in node.reason
    custom = helper.make_node("FancyFuse", ["X"], ["Y"], name="fancy", domain="com.example")
    [node] = check_onnx(_model([custom], [_x()], [_x("Y")], domains=["com.example"]), "10.3", dla=False).nodes
    assert node.status == "unsupported" and "com.example" in node.reason and "plugin" in node.reason


def test_layernorm_parses_on_10_3_but_not_8_5():
    scale = numpy_helper.from_array(np.ones(16, np.float32), "scale")
    ln = helper.make_node("LayerNormalization", ["X", "scale"], ["Y"], name="ln", axis=-1)
    model = _model([ln], [_x()], [_x("Y")], [scale], opset=17)
    assert check_onnx(model, "10.3", dla=False).parses
    report = check_onnx(model, "8.5", dla=False)
    assert not report.parses and not report.model_issues and _status(report, "LayerNormalization") == {"unsupported"}


def test_statically_checkable_restrictions():
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([2], np.int64), "ends")
    axes_in = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    sl = helper.make_node("Slice", ["X", "starts", "ends", "axes"], ["Y"], name="slice")
    model = _model([sl], [_x(), axes_in], [_x("Y")], [starts, ends])
    assert "`axes`" in check_onnx(model, "8.5", dla=False).unsupported[0].reason  # 8.5: axes must be an initializer
    assert check_onnx(model, "10.3", dla=False).parses  # 10.3 added tensor axes for Slice

    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero_point = numpy_helper.from_array(np.array(3, np.int8), "zp")
    xq = _x("Xq", dtype=TensorProto.INT8)
    dq = helper.make_node("DequantizeLinear", ["Xq", "s", "zp"], ["Y"], name="dq")
    report = check_onnx(_model([dq], [xq], [_x("Y")], [scale, zero_point]), "10.3", dla=False)
    assert "zero point is not zero" in report.unsupported[0].reason

    pool = helper.make_node("MaxPool", ["X"], ["Y", "I"], name="pool", kernel_shape=[2, 2])
    report = check_onnx(_model([pool], [_x()], [_x("Y"), _x("I", dtype=TensorProto.INT64)]), "10.3", dla=False)
    assert "`Indices`" in report.unsupported[0].reason


def test_op_tables_are_data_that_the_script_checks_against_operators_md(tmp_path):
    """The parser tables are data files with their source; scripts/trt_op_tables.py reads an onnx-tensorrt
    docs/operators.md (its matrix rows, HTML line breaks and opset sentence) and finds any difference from the
    shipped table. The document here is the shipped 8.5 table written back in operators.md's layout."""
    from edgekit.targets.tensorrt_ops import TABLE_DIR

    shipped = json.loads((TABLE_DIR / "onnx-tensorrt-8.5.json").read_text())
    assert "6d0ab7be" in shipped["source"] and TABLES["8.5"].source == shipped["source"]
    rows = [f"| {op} | Y | {cols[0]} | {' '.join(cols[1:]).replace('. Supported', '.<br />Supported')} |"
            for op, cols in shipped["supported"].items()]  # fmt: skip
    rows += [f"| {op} | N |" for op in shipped["not_supported"]]
    doc = tmp_path / "operators.md"
    head = ["TensorRT 8.5 supports operators up to Opset 17.", "", "| Operator | Supported | Types | Restrictions |"]
    doc.write_text("\n".join([*head, "|---|---|---|---|", *rows]) + "\n")
    script = [sys.executable, str(ROOT / "scripts" / "trt_op_tables.py"), str(doc), "--tensorrt", "8.5"]
    ok = subprocess.run(script, check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    doc.write_text(doc.read_text().replace("| Mod | Y | FP32, FP16, INT32 |", "| Mod | N |"))
    changed = subprocess.run(script, check=False, capture_output=True, text=True)
    assert changed.returncode == 1 and "Mod: shipped ['FP32, FP16, INT32'], document None" in changed.stdout


def test_unknown_version_names_the_known_ones(fusion_model):
    with pytest.raises(UsageError) as e:
        check_onnx(fusion_model, "9.1", dla=False)
    assert "9.1" in str(e.value) and all(v in str(e.value) for v in TABLES)
    assert check_onnx(fusion_model, "10.3.0.30", dla=False).trt_version == "10.3"


def test_report_rows():
    det = helper.make_node("Det", ["X"], ["Y"], name="det")
    relu = helper.make_node("Relu", ["Y"], ["Z"], name="relu")
    report = check_onnx(_model([det, relu], [_x(shape=(2, 3, 3))], [_x("Z", (2,))]), "10.3", dla=False)
    assert len(ROW_HEADER) == 4
    assert report_rows(report) == [
        ("det", "Det", "unsupported", report.nodes[0].reason),
        ("relu", "Relu", "ok", ""),
    ]
    assert [r[0] for r in report_rows(report, problems_only=True)] == ["det"]


# -- the DLA check ---------------------------------------------------------------------------------------------------


def test_dla_report_on_the_fusion_model(fusion_model, io):
    shapes = {k: tuple(v["opt"]) for k, v in optimization_profile(io, static=True).items()}
    report = check_onnx(fusion_model, "10.3", dla=True, precision="fp16", shapes=shapes)
    assert report.parses and report.dla
    assert _status(report, "Conv") == {"ok"}  # 3x3 kernels, strides 1-2, padding 1: inside the DLA limits
    assert _status(report, "LayerNormalization") == {"gpu-fallback"}
    assert _status(report, "MatMul") == {"gpu-fallback"}
    assert any("matrix multiply" in n.reason for n in report.gpu_fallback if n.op_type == "Gemm")
    # ReLU6 is a clipped ReLU the DLA runs; clamp(min=1) is not
    clips = {n.status for n in report.nodes if n.op_type == "Clip" and n.name.startswith("n4")}
    assert clips == {"ok"} and _status(report, "Clip") == {"ok", "gpu-fallback"}
    assert not any("dynamic" in n.reason for n in report.nodes)
    # the same graph with its dims left dynamic: the DLA takes none of the layers that see them
    dynamic = check_onnx(fusion_model, "10.3", dla=True, precision="fp16")
    assert _status(dynamic, "Conv") == {"gpu-fallback"}
    assert all("dynamic dims" in n.reason for n in dynamic.nodes if n.op_type == "Conv")
    # fp32 keeps everything off the DLA; 8.5's DLA has no SoftMax on Xavier
    fp32 = check_onnx(fusion_model, "10.3", dla=True, precision="fp32", shapes=shapes)
    assert all("FP16 and INT8 only" in n.reason for n in fp32.nodes if n.op_type == "Conv")
    softmax_85 = check_onnx(fusion_model, "8.5", dla=True, shapes=shapes)
    assert all("Xavier" in n.reason for n in softmax_85.nodes if n.op_type == "Softmax")


def test_dla_limits_on_small_graphs():
    def conv(kernel, stride=1):
        w = numpy_helper.from_array(np.zeros((4, 8, kernel, kernel), np.float32), "W")
        node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", kernel_shape=[kernel] * 2, strides=[stride] * 2)
        return check_onnx(_model([node], [_x(shape=(1, 8, 64, 64))], [_x("Y", None)], [w]), "10.3", dla=True).nodes[0]

    assert conv(3).status == "ok"
    assert conv(33).status == "gpu-fallback" and "kernel" in conv(33).reason
    assert conv(3, stride=9).status == "gpu-fallback" and "stride" in conv(3, stride=9).reason
    div = helper.make_node("Div", ["X", "X"], ["Y"], name="div")
    [node] = check_onnx(_model([div], [_x()], [_x("Y")]), "10.3", dla=True).nodes
    assert node.status == "gpu-fallback" and "no DLA layer" in node.reason


# -- the bundle ----------------------------------------------------------------------------------------------------


def test_optimization_profile_follows_the_io_spec(io):
    prof = optimization_profile(io)
    assert list(prof) == io.input_names
    assert prof["text_ids"] == {"min": [1, 1], "opt": [1, 16], "max": [64, 32]}
    assert prof["image"] == {"min": [1, 1, 28, 28], "opt": [1, 1, 28, 28], "max": [64, 1, 28, 28]}
    static = optimization_profile(io, static=True)
    assert all(p["min"] == p["opt"] == p["max"] for p in static.values())


def test_bundle_contents_and_manifest(fusion_onnx, io, tmp_path):
    out = tmp_path / "tensorrt-fp16"
    art = write_bundle(fusion_onnx, io, ORIN_NX, "fp16", out, "parent-hash", {"source": "test"})
    assert art.directory == out and art.format == "tensorrt" and art.file == "model.onnx"
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    loaded = load_artifact(out)  # verifies every file against its manifest hash
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == BUNDLE_FILES - {"manifest.json"}
    assert loaded.meta["requires"] == {"tensorrt": "10.3.0", "jetpack": "6.1"}
    assert loaded.meta["dla_core"] is None and loaded.meta["source"] == "test" and loaded.parent == "parent-hash"
    assert json.loads((out / "profile.json").read_text()) == optimization_profile(io)
    report = json.loads((out / "op_report.json").read_text())
    assert report["parses"] and report["dla"] and report["tensorrt"] == "10.3"
    assert len(report["nodes"]) == len(onnx.load(str(fusion_onnx)).graph.node)
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(EdgeKitError, match="does not match its manifest"):
        load_artifact(out)


def test_trtexec_script_matches_the_profile(fusion_onnx, io, tmp_path):
    write_bundle(fusion_onnx, io, ORIN_NX, "fp16", tmp_path / "gpu", "p", {})
    sh = (tmp_path / "gpu" / "build_engine.sh").read_text()
    prof = optimization_profile(io)
    for point in ("min", "opt", "max"):
        flag = f"--{point}Shapes=" + ",".join(f"{k}:{'x'.join(map(str, v[point]))}" for k, v in prof.items())
        assert flag in sh
    assert "--maxShapes=image:64x1x28x28,text_ids:64x32," in sh
    assert all(f in sh for f in ("--fp16", "--timingCacheFile=timing.cache", "--memPoolSize=workspace:1024"))
    assert "--int8" not in sh and "--useDLACore" not in sh
    assert "mv -f model.engine.tmp model.engine" in sh  # the engine appears only once complete
    proc = subprocess.run(["bash", "-n", str(tmp_path / "gpu" / "build_engine.sh")], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr

    art = write_bundle(fusion_onnx, io, ORIN_NX, "fp16", tmp_path / "dla", "p", {}, dla_core=1)
    sh = (tmp_path / "dla" / "build_engine.sh").read_text()
    assert "--useDLACore=1" in sh and "--allowGPUFallback" in sh
    opt = ",".join(f"{k}:{'x'.join(map(str, v['opt']))}" for k, v in prof.items())
    assert all(f"--{p}Shapes={opt}" in sh for p in ("min", "opt", "max"))  # the DLA needs static shapes
    assert art.meta["dla_core"] == 1
    assert json.loads((tmp_path / "dla" / "profile.json").read_text())["audio"]["max"] == [1, 1, 40, 98]


def test_int8_bundle_takes_explicit_qdq(tmp_path):
    """A Q/DQ graph (symmetric, zero point 0, per-channel weights) as the int8 stage writes it."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
        numpy_helper.from_array(np.ones((4, 8, 3, 3), np.int8), "wq"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dqw", axis=0),
        helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16, 16])
    model = _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=17)
    onnx.save(model, str(tmp_path / "qdq.onnx"))
    spec = IOSpec(
        (TensorSpec("x", "float32", ("batch", 8, 16, 16)),), (TensorSpec("y", "float32", ("batch", 4, 16, 16)),),
        {"batch": DimRange(1, 2, 8)},
    )  # fmt: skip
    art = write_bundle(tmp_path / "qdq.onnx", spec, ORIN_NX, "int8", tmp_path / "int8", "p", {}, dla_core=0)
    report = json.loads((tmp_path / "int8" / "op_report.json").read_text())
    assert report["parses"] and {n["status"] for n in report["nodes"]} == {"ok"}  # all DLA-capable on 10.3
    xavier = check_onnx(model, "8.5", dla=True, precision="int8", shapes={"x": (2, 8, 16, 16)})
    reasons = {n.name: n.reason for n in xavier.nodes}
    assert xavier.parses and "explicit quantization" in reasons["conv"] and "explicit quantization" in reasons["q"]
    assert reasons["dqw"] == ""  # dequantizing constant weights folds at build time
    sh = (art.directory / "build_engine.sh").read_text()
    assert "--int8" in sh and "--fp16" in sh and "--useDLACore=0" in sh and "--minShapes=x:2x8x16x16" in sh
    fp32 = write_bundle(tmp_path / "qdq.onnx", spec, ORIN_NX, "fp32", tmp_path / "fp32", "p", {}, workspace_mb=512)
    sh = (fp32.directory / "build_engine.sh").read_text()
    assert "--noTF32" in sh and "--fp16" not in sh and "--memPoolSize=workspace:512" in sh


@pytest.mark.parametrize("name", ["jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb"])
def test_shipped_orin_profiles_take_the_fusion_model(fusion_onnx, io, tmp_path, name):
    if name not in profile_names():
        pytest.skip(f"profile {name} is not shipped")
    profile, _ = resolve_profile(name)
    art = write_bundle(fusion_onnx, io, profile, "fp16", tmp_path / name, "p", {})
    assert art.meta["requires"]["tensorrt"] == profile.software["tensorrt"]
    assert json.loads((tmp_path / name / "op_report.json").read_text())["dla"] == (profile.dla_cores > 0)


def test_bundle_refusals_write_nothing(fusion_onnx, io, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(EdgeKitError) as e:
        write_bundle(fusion_onnx, io, XAVIER_NX, "fp16", out, "p", {})
    assert "LayerNormalization" in str(e.value) and "node_layer_norm" in str(e.value) and "opset 18" in str(e.value)
    cases = [
        (dict(profile=ORIN_NANO, precision="fp16", dla_core=0), "0 DLA core"),
        (dict(profile=ORIN_NX, precision="fp32", dla_core=0), "fp16 and int8 only"),
        (dict(profile=ORIN_NX, precision="int8"), "no Q/DQ nodes"),
        (dict(profile=_profile("trt9", "9.1", "x"), precision="fp16"), "10.3"),
        (dict(profile=ORIN_NX, precision="bf16"), "unknown TensorRT precision"),
    ]
    for kw, message in cases:
        with pytest.raises(UsageError, match=message):
            write_bundle(fusion_onnx, io, kw.pop("profile"), kw.pop("precision"), out, "p", {}, **kw)
    assert not out.exists() and not list(tmp_path.glob(".b.*"))
    if "jetson-xavier-nx" in profile_names():  # the shipped Xavier NX profile: JetPack 5.1, TensorRT 8.5.2
        with pytest.raises(EdgeKitError, match="LayerNormalization"):
            write_bundle(fusion_onnx, io, resolve_profile("jetson-xavier-nx")[0], "fp16", out, "p", {})


# -- the build script and build_engine() on a machine without TensorRT ------------------------------------------


@pytest.fixture(scope="module")
def bundle(fusion_onnx, io, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tensorrt-fp16"
    write_bundle(fusion_onnx, io, ORIN_NX, "fp16", out, "p", {})
    return out


def _script(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(bundle / "build_engine.py"), *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("script", ["build_engine.py", "edgekit_agent.py"])
def test_bundle_scripts_run_on_jetpack_python(bundle, tmp_path, script):
    """JetPack 5's system Python is 3.8 (and TensorRT's bindings exist only for it): vermin finds any newer syntax or
    standard-library use, which ast's feature_version alone does not (str.removeprefix, zip(strict=))."""
    py_compile.compile(str(bundle / script), cfile=str(tmp_path / "b.pyc"), doraise=True)
    ast.parse((bundle / script).read_text(), feature_version=(3, 8))
    vermin = [str(Path(sys.executable).with_name("vermin")), "--target=3.8-", "--no-tips", "--violations",
              "--eval-annotations"]  # fmt: skip
    r = subprocess.run([*vermin, str(bundle / script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_build_script_arguments(bundle, tmp_path):
    help_ = _script(bundle, "--help")
    assert help_.returncode == 0 and "--dla-core" in help_.stdout and "--precision" in help_.stdout
    bad_profile = tmp_path / "profile.json"
    bad_profile.write_text(json.dumps({"image": {"min": [2], "opt": [1], "max": [4]}}))
    for args, message in [
        (["--precision", "fp64"], "invalid choice"),
        (["--workspace-mb", "0"], "--workspace-mb must be positive"),
        (["--precision", "fp32", "--dla-core", "0"], "fp16 and int8 only"),
        (["--dla-core", "0", "--gpu"], "not allowed with"),
        (["--onnx", str(tmp_path / "missing.onnx")], "does not exist"),
        (["--profile", str(bad_profile)], "min <= opt <= max"),
        (["--no-such-flag"], "unrecognized arguments"),
    ]:
        r = _script(bundle, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith("build_engine.py: error:")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_build_script_imports_tensorrt_only_to_build(bundle):
    r = _script(bundle)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "tensorrt Python package is not installed" in r.stderr
    assert not (bundle / "model.engine").exists()


def test_build_engine_runs_only_edgekits_own_script(bundle, tmp_path):
    """A bundle whose script was changed (and its manifest re-hashed to match) is refused before anything runs."""
    forged = tmp_path / "forged"
    shutil.copytree(bundle, forged)
    marker = tmp_path / "ran"
    script = forged / "build_engine.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n" + script.read_text())
    art = load_artifact(forged, verify=False)
    art.write_manifest()  # the hashes now match the forged script
    with pytest.raises(UsageError, match="is not the build script this EdgeKit writes"):
        build_engine(forged)
    assert not marker.exists()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_build_engine_refuses_without_tensorrt(bundle):
    with pytest.raises(UsageError) as e:
        build_engine(bundle)
    assert "tensorrt" in e.value.message and "build_engine.sh" in (e.value.hint or "")
    with pytest.raises(UsageError, match="needs tensorrt"):
        load_runner(load_artifact(bundle))
    py_compile.compile(str(Path(__file__).parents[1] / "edgekit" / "runtimes" / "tensorrt.py"), doraise=True)


def test_build_engine_refuses_other_artifacts(bundle, tmp_path):
    other = tmp_path / "onnx"
    other.mkdir()
    (other / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes())
    art = load_artifact(bundle)
    type(art)("onnx", "fp32", other, "model.onnx", art.io, "p").write_manifest()
    with pytest.raises(UsageError, match="not a TensorRT bundle"):
        build_engine(other)


# -- on a device with TensorRT and a GPU ----------------------------------------------------------------------------

on_device = pytest.mark.skipif(not (HAS_TRT and gpu_visible()), reason="needs TensorRT and a CUDA GPU")


@pytest.mark.tensorrt
@on_device
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_matches_onnxruntime(fusion_onnx, io, tmp_path, precision, tolerance):
    from edgekit.runtimes.ort import OrtRunner
    from edgekit.runtimes.tensorrt import TensorRTRunner

    write_bundle(fusion_onnx, io, ORIN_NANO, precision, tmp_path / precision, "p", {})
    engine = build_engine(tmp_path / precision)
    art = load_artifact(tmp_path / precision)
    assert engine.is_file() and "model.engine" in json.loads((engine.parent / "manifest.json").read_text())["files"]
    trt_runner, ort_runner = TensorRTRunner(art), OrtRunner(art)
    for batch, seq in [(1, 16), (4, 7), (64, 32)]:  # opt, inside and max of the profile
        feeds = io.example_inputs(batch=batch, seq=seq, seed=batch)
        got, want = trt_runner.run(feeds)["logits"], ort_runner.run(feeds)["logits"]
        assert got.shape == want.shape == (batch, 10)
        assert np.abs(got - want).max() < tolerance, (batch, seq)
    with pytest.raises(UsageError):
        trt_runner.run(io.example_inputs(batch=65))


@pytest.mark.tensorrt
@on_device
def test_dla_engine_runs_its_static_shape(fusion_onnx, io, tmp_path):
    import tensorrt as trt

    from edgekit.runtimes.tensorrt import TensorRTRunner

    if trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores == 0:
        pytest.skip("this device has no DLA")
    write_bundle(fusion_onnx, io, ORIN_NX, "fp16", tmp_path / "dla", "p", {}, dla_core=0)
    build_engine(tmp_path / "dla")
    layers = json.loads((tmp_path / "dla" / "dla_layers.json").read_text())
    assert any(la["dla"] for la in layers) and any(not la["dla"] for la in layers)
    runner = TensorRTRunner(load_artifact(tmp_path / "dla"))
    assert runner.run(io.example_inputs(batch=1))["logits"].shape == (1, 10)
    with pytest.raises(UsageError, match="opt shape only"):
        runner.run(io.example_inputs(batch=2))


@pytest.mark.tensorrt
@on_device
def test_profile_reports_tensorrt_layer_times(fusion_onnx, io, tmp_path):
    from edgekit.profiling.local import Settings, profile

    write_bundle(fusion_onnx, io, ORIN_NANO, "fp16", tmp_path / "fp16", "p", {})
    build_engine(tmp_path / "fp16")
    result = profile(tmp_path / "fp16", Settings(batches=(1, 4), runs=20))
    assert [r["batch"] for r in result["results"]] == [1, 4] and result["runtime"].startswith("tensorrt")
    ops = result["ops"]
    assert ops["runs"] == 20 and ops["top_nodes"] and 0 < ops["total_ms"]


class _CountingCudart:
    """cuda-python's runtime module, counting the device allocations and host<->device copies made through it."""

    COUNTED = ("cudaMalloc", "cudaMemcpy", "cudaMemcpyAsync")

    def __init__(self, cudart):
        self.cudart, self.calls = cudart, Counter()

    def __getattr__(self, name):
        attr = getattr(self.cudart, name)
        if name not in self.COUNTED:
            return attr

        def counted(*args):
            self.calls[name] += 1
            return attr(*args)

        return counted


@pytest.fixture(scope="module")
def fp32_engine(fusion_onnx, io, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engine") / "tensorrt-fp32"
    write_bundle(fusion_onnx, io, ORIN_NANO, "fp32", out, "p", {})
    build_engine(out)
    return out


@pytest.mark.tensorrt
@on_device
def test_runner_binds_once_per_input_shape(fp32_engine, io):
    from edgekit.runtimes.tensorrt import TensorRTRunner

    art = load_artifact(fp32_engine)
    runner = TensorRTRunner(art)
    cudart = runner.cudart = _CountingCudart(runner.cudart)
    small, other, large = (io.example_inputs(batch=b, seq=s, seed=b + s) for b, s in [(2, 16), (2, 15), (8, 32)])
    runner.run(small)
    bound, mallocs = dict(runner.buffers), cudart.calls["cudaMalloc"]
    reshaped = []
    set_shape = runner.io.set_shape
    runner.io.set_shape = lambda name, shape: reshaped.append(name) or set_shape(name, shape)
    got = {"other": runner.run(other)}
    assert reshaped == ["text_ids", "text_mask"] and runner.buffers == bound  # only the changed shapes; none grows
    reshaped.clear()
    got["other again"] = runner.run(other)
    assert not reshaped and runner.buffers == bound and cudart.calls["cudaMalloc"] == mallocs  # same shapes: bound
    got["large"] = runner.run(large)
    assert runner.shapes == {n: large[n].shape for n in runner.io.inputs} and runner.buffers != bound
    got["small"] = runner.run(small)  # back to a smaller shape, in the grown buffers
    fresh = TensorRTRunner(art)
    for key, feeds in [("other", other), ("other again", other), ("large", large), ("small", small)]:
        np.testing.assert_allclose(got[key]["logits"], fresh.run(feeds)["logits"], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.tensorrt
@on_device
def test_bound_call_runs_the_bound_feeds_on_the_device(fp32_engine, io):
    from edgekit.runtimes import bound_call
    from edgekit.runtimes.tensorrt import TensorRTRunner

    runner = TensorRTRunner(load_artifact(fp32_engine))
    first, second = (io.example_inputs(batch=4, seed=s) for s in (1, 2))
    want = runner.run(first)["logits"]
    call = bound_call(runner, first)
    call()
    got = np.empty_like(want)
    d2h = runner.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    runner._call(runner.cudart.cudaMemcpy(got.ctypes.data, runner.buffers["logits"][0], got.nbytes, d2h))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    runner.run(second)  # replaces the bound feeds on the device: the bound call refuses rather than time them
    with pytest.raises(UsageError, match="bind the feeds again"):
        call()


@pytest.mark.tensorrt
@on_device
def test_profile_times_only_the_engine(fp32_engine, monkeypatch):
    """`edgekit profile` times enqueue + synchronize: no feed checks and no host<->device copies in the timed calls."""
    import edgekit.profiling.local as local
    import edgekit.runtimes.tensorrt as tensorrt_runtime

    cudart, time_calls = _CountingCudart(tensorrt_runtime._cudart()), local.time_calls
    copies_timed = []

    def timing(fn, *args, **kwargs):
        before = cudart.calls["cudaMemcpyAsync"]
        seconds = time_calls(fn, *args, **kwargs)
        copies_timed.append(cudart.calls["cudaMemcpyAsync"] - before)
        return seconds

    monkeypatch.setattr(tensorrt_runtime, "_cudart", lambda: cudart)
    monkeypatch.setattr(local, "time_calls", timing)
    result = local.profile(fp32_engine, local.Settings(batches=(1, 4), runs=20, ops=False))
    assert [r["latency_ms"]["runs"] for r in result["results"]] == [20, 20]
    assert copies_timed == [0, 0] and cudart.calls["cudaMemcpyAsync"] > 0  # run() and bind() copied, outside
