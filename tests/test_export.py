"""Export: profiles, the capability table, the ONNX parity gate, manifests and the bad-input cases
(one line, exit 2, nothing written). The heavy contract test over every format is in test_targets.py."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from edgekit.api.export import with_fp32
from edgekit.artifact import Artifact, load_artifact
from edgekit.data import with_modalities
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.errors import EdgeKitError, UsageError
from edgekit.evaluation import torch_outputs
from edgekit.formats import check_request
from edgekit.hardware import ALIASES, host_profile, parse_profile, profile_names, resolve_profile
from edgekit.hardware.identity import host_facts
from edgekit.io import DimRange, IOSpec, TensorSpec
from edgekit.loading import save_model_package
from edgekit.models import build_fusion_model
from edgekit.pipeline import Speed
from edgekit.runtimes import onnx_runner
from edgekit.targets.onnx import export_onnx
from edgekit.targets.parity import TOLERANCES, check_parity, parity_points, require_parity, summary, top1_agreement

from .conftest import run_cli

SHIPPED = {
    "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "jetson-xavier-nx",
    "x86-avx2", "x86-avx512-vnni", "arm64-cortex-a76", "android-arm64",
}  # fmt: skip
KWARGS = {"arch": "attention", "preset": "small", "vocab_size": 41, "max_len": 32}


@pytest.fixture(scope="module")
def io():
    return io_spec(AVDigitsConfig(), 41)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_fusion_model(**KWARGS).eval()


@pytest.fixture(scope="module")
def small_package(tmp_path_factory, small_model, io):
    path = tmp_path_factory.mktemp("pkg") / "small"
    return save_model_package(small_model, io, path, factory="edgekit.models:build_fusion_model", kwargs=KWARGS)


def _path(name):
    from edgekit.hardware import _shipped

    return _shipped()[name]


# -- hardware profiles ------------------------------------------------------------------------------


def test_all_eight_profiles_ship_and_validate():
    assert SHIPPED <= set(profile_names())
    for name in SHIPPED:
        p, _ = resolve_profile(name)
        assert p.name == name and p.budgets is not None and p.exports
        assert all(v > 0 for v in p.peak_tops.values()) and p.memory_bandwidth_gbs > 0
    jetson, _ = resolve_profile("jetson-agx-orin-64gb")
    assert jetson.software["tensorrt"] and jetson.dla_cores == 2
    assert (
        resolve_profile("x86-avx512-vnni")[0].peak_tops["int8"]
        > resolve_profile("x86-avx512-vnni")[0].peak_tops["fp32"]
    )


def test_aliases_resolve_and_say_so():
    for alias, name in ALIASES.items():
        p, note = resolve_profile(alias)
        assert p.name == name and alias in note and name in note


def test_x86_resolves_to_the_profile_this_cpu_satisfies():
    vnni = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    assert host_profile("x86", vnni)[0] == "x86-avx512-vnni"
    name, why = host_profile("x86", ("avx2", "fma", "f16c"))  # an AVX2-only Zen 3
    assert name == "x86-avx2" and "avx2, fma" in why
    name, why = host_profile("x86", ("asimd", "asimddp"))
    assert name is None and "lacks avx2, fma" in why
    # `x86` is this host: the INT8 sizing and budgets of the profile its CPU satisfies, and this host as the device
    p, note = resolve_profile("x86")
    here, _ = host_profile("x86")
    shipped = resolve_profile(here or "x86-avx512-vnni")[0]
    assert p.name == "x86" and p.cpu_isa == shipped.cpu_isa and p.budgets == shipped.budgets
    assert p.not_the_device(host_facts()) is None if here else "lacks" in p.not_the_device(host_facts())
    assert "this host's CPU" in note and f"profile '{shipped.name}'" in note


def test_profiles_cli_list_and_show():
    r = run_cli("profiles", "list", "--json")
    assert r.code == 0, r.stderr
    assert SHIPPED <= {p["name"] for p in json.loads(r.stdout)["profiles"]}
    r = run_cli("profiles", "show", "jetson", "--json")
    assert r.code == 0 and json.loads(r.stdout)["name"] == "jetson-orin-nano-8gb"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "budgets"}, "field 'budgets' is missing"),
        ({"set": {"peak_top": {"fp32": 1.0}}}, "did you mean 'peak_tops'"),
        ({"set": {"budgets": {"latency_p95_ms": -1}}}, "budgets.latency_p95_ms"),
        ({"set": {"exports": [{"format": "onnx", "precision": "fp64"}]}}, "exports.0.precision"),
    ],
)
def test_bad_profile_files_name_the_field(tmp_path, change, message):
    data = yaml.safe_load(_path("x86-avx2").read_text())
    data.pop(change.get("drop", "-"), None)
    data.update(change.get("set", {}))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        parse_profile(path)
    r = run_cli("profiles", "show", str(path))
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_unknown_target_suggests_the_closest_name():
    with pytest.raises(UsageError, match="did you mean 'x86-avx2'"):
        resolve_profile("x86-avx3")


# -- the capability table ---------------------------------------------------------------------------


def test_capability_table_rejects_before_work():
    x86, _ = resolve_profile("x86-avx2")
    with pytest.raises(UsageError, match="no fp16 precision"):
        check_request("executorch", "fp16", x86)
    with pytest.raises(UsageError, match="unknown format"):
        check_request("tflite", "fp32", x86)
    no_int8 = x86.model_copy(update={"precisions": ("fp32",), "exports": ()})
    with pytest.raises(UsageError, match="does not support int8"):
        check_request("onnx", "int8", no_int8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "jetson-orin-nano-8gb", "--format", "tensorrt", "--precision", "fp64"], "'fp64' is not one of"),
        (["--target", "nowhere-9000"], "unknown target 'nowhere-9000'"),
        (["--target", "x86-avx2", "--format", "executorch", "--precision", "fp16"], "no fp16 precision"),
    ],
)
def test_export_bad_requests_exit_2_and_write_nothing(tmp_path, small_package, args, message):
    out = tmp_path / "out"
    r = run_cli("export", "--model", str(small_package), "--out", str(out), *args)
    assert r.code == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # no output directory, no temporary leftovers


def test_export_max_drop_runs_the_accuracy_aware_search(tmp_path, small_package):
    """A plain package with --max-drop goes through the search compress runs (tests/test_accuracy_aware.py tests the
    search itself); what it kept float is in the manifest, its table in export.json."""
    args = ["--format", "onnx", "--precision", "int8", "--max-drop", "100", "--calib-samples", "16", "--no-validate"]
    r = run_cli(
        "export", "--model", str(small_package), "--target", "x86", "--out", str(tmp_path / "out"), *args, "--json"
    )
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    (table,) = result["sensitivity"].values()
    assert result["int8"] == "searched" and table["fits"] and table["trials"][0]["float_parts"] == []
    row = next(a for a in result["artifacts"] if a["precision"] == "int8")
    assert load_artifact(row["path"].rsplit("/", 1)[0]).meta["quantization"]["float_nodes"] == []
    speed = row["speed"]  # x86 is this host: INT8 was timed against the FP32 model side by side
    assert speed["int8_p50_ms"] > 0 and speed["fp32_p50_ms"] > 0 and speed["threads"] >= 1
    assert (speed["ships"] == "fp32") == (speed["fp32_p50_ms"] < 0.95 * speed["int8_p50_ms"])


def test_int8_ships_only_where_it_is_faster_than_fp32():
    """FP32 ships when it is at least 5% faster than INT8 in the same runtime (closer is timing noise, and INT8 is
    the smaller); where INT8 is timed, each INT8 format's FP32 model is built before it."""
    slower = Speed(int8_p50_ms=1.2, fp32_p50_ms=1.0, threads=2)
    assert slower.ships == "fp32" and slower.why() == (
        "INT8 takes 1.20x the time of FP32 at batch 1 here (1.200 vs 1.000 ms p50); FP32 ships"
    )
    assert Speed(1.0, 0.97, 2).ships == "int8" and Speed(0.5, 1.0, 2).why().startswith("INT8 is 2.00x faster")
    ov = [("openvino", "int8")]
    assert with_fp32(ov, timed=True) == [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8")]
    assert with_fp32(ov, timed=False) == [("onnx", "fp32"), ("openvino", "int8")]


def test_export_refuses_an_unwritable_out_dir(small_package):
    r = run_cli("export", "--model", str(small_package), "--target", "x86-avx2", "--out", "/proc/edgekit-out")
    assert r.code == 2 and "not writable" in r.stderr


# -- ONNX export and the parity gate ---------------------------------------------------------------


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a tensor's value: the exporter cannot trace both branches
            return x * 2
        return x


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x + 1)


def test_data_dependent_forward_names_the_module(tmp_path):
    io = IOSpec((TensorSpec("x", "float32", ("batch", 4)),), (TensorSpec("y", "float32", ("batch", 4)),),
                {"batch": DimRange(1, 2, 8)})  # fmt: skip
    with pytest.raises(UsageError, match=r"DataDependent \('gate'"):
        export_onnx(Wrapper(), io, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_parity_gate_on_real_samples(tmp_path, small_model, io, test_split):
    path = export_onnx(small_model, io, tmp_path / "m.onnx", slim=True)
    import onnx

    from edgekit.targets.onnx import module_scope

    # onnxslim drops metadata; the module scopes are put back so INT8 can be governed per branch
    compute = [n for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    branches = {
        (module_scope(n) or "?").split(".")[1] for n in compute if (module_scope(n) or "").startswith("branches")
    }
    assert all(module_scope(n) for n in compute) and branches == {"image", "text", "audio"}
    ort_run = onnx_runner(path, io).run
    cases = check_parity(io, torch_outputs(small_model, io), ort_run, test_split)
    assert len(cases) == len(parity_points(io)) >= 4 and {c.batch for c in cases} >= {1, 32}
    assert {c.dims["seq"] for c in cases} == {1, 16, 32}
    assert all(c.passed and c.max_abs < 1e-4 for c in cases)
    require_parity(cases, "the model")

    def perturbed(feeds):
        return {k: v + 0.05 * np.sign(v) for k, v in ort_run(feeds).items()}

    bad = check_parity(io, torch_outputs(small_model, io), perturbed, test_split)
    with pytest.raises(EdgeKitError, match="output 'logits'"):
        require_parity(bad, "the model")
    # INT8's tolerance takes rounding of that size; an artifact whose decisions no longer follow the model fails
    int8 = TOLERANCES["int8"]
    rounded = check_parity(io, torch_outputs(small_model, io), perturbed, test_split, int8)
    require_parity(rounded, "an INT8 model", int8)
    assert summary(rounded, int8)["passed"] and summary(rounded, int8)["tolerance"] == int8.as_dict()

    def lost(feeds):
        return {k: -v for k, v in ort_run(feeds).items()}

    gone = check_parity(io, torch_outputs(small_model, io), lost, test_split, int8)
    assert top1_agreement(gone) < 0.8 and not summary(gone, int8)["passed"]
    with pytest.raises(EdgeKitError, match=r"top-1 agreement 0\.\d+ \(at least 0\.8\)"):
        require_parity(gone, "an INT8 model", int8)
    # a regression's or an embedding's outputs are held to their error alone: no argmax decisions to agree on
    assert top1_agreement(check_parity(io, torch_outputs(small_model, io), lost, test_split, int8, classes=False)) == 1


def test_parity_feeds_are_real_data_at_other_lengths(io, test_split):
    from edgekit.targets.parity import resize

    feeds, _ = next(test_split.batches(4))
    feeds = with_modalities(io, feeds, io.modalities)
    longer = resize(io, feeds, "seq", 32)
    assert longer["text_ids"].shape == (4, 32) and (longer["text_mask"][:, 16:] == 0).all()
    assert (longer["text_ids"][:, :16] == feeds["text_ids"]).all()
    assert resize(io, feeds, "seq", 1)["text_mask"].shape == (4, 1)


# -- manifests ----------------------------------------------------------------------------------------


def test_manifest_hashes_catch_modified_files(tmp_path, small_model, io):
    d = tmp_path / "onnx-fp32"
    export_onnx(small_model, io, d / "model.onnx")
    Artifact("onnx", "fp32", d, "model.onnx", io, "abc", {"profile": "x"}).write_manifest()
    art = load_artifact(d)
    assert art.precision == "fp32" and art.io == io
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgeKitError, match="does not match its manifest hash"):
        load_artifact(d)
    with pytest.raises(UsageError, match=r"no manifest\.json"):
        load_artifact(tmp_path)


def test_lowering_for_tensorrt_8_5_keeps_the_numbers(tmp_path, small_model, io, test_split):
    import onnx

    from edgekit.targets.onnx import lower_onnx
    from edgekit.targets.tensorrt_ops import check_onnx

    src = export_onnx(small_model, io, tmp_path / "m.onnx", slim=True)
    assert not check_onnx(onnx.load(str(src)), "8.5", dla=False).parses
    changes = lower_onnx(src, tmp_path / "m17.onnx", 17, keep_layernorm=False)
    lowered = onnx.load(str(tmp_path / "m17.onnx"))
    assert changes == ["opset 18 -> 17", "LayerNormalization decomposed"]
    assert lowered.opset_import[0].version == 17 and all(n.op_type != "LayerNormalization" for n in lowered.graph.node)
    assert check_onnx(lowered, "8.5", dla=False).parses
    cases = check_parity(io, onnx_runner(src, io).run, onnx_runner(tmp_path / "m17.onnx", io).run, test_split)
    assert all(c.passed and c.max_abs < 1e-5 for c in cases)


@pytest.mark.openvino
def test_openvino_converts_an_onnx_file_in_a_directory_with_a_comma(tmp_path):
    """OVC reads "runs/Xeon, avx512/model.onnx" as two files; EdgeKit's conversion goes through a symlink."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.runtimes.openvino import convert_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    where = tmp_path / "Intel(R) Xeon(R), avx512_vnni"
    where.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(where / "model.onnx"))
    model = convert_onnx(where / "model.onnx")
    assert [o.get_any_name() for o in model.outputs] == ["y"]
