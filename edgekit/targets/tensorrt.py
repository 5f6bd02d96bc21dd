"""TensorRT target: a deployment bundle, because engines can only be built where they run.

An engine is specific to the TensorRT version and the GPU (or DLA) that built it, so export writes a bundle
(the ONNX, its optimization profile, a static op check, and two equivalent build scripts: a Python one and
a trtexec line) and `edgekit build BUNDLE` runs the Python one on the device. The op check runs before
anything is written: a graph TensorRT cannot parse never becomes a bundle.

DLA needs static shapes (the guide: "DLA does not support dynamic dimensions, so the profile's min, max, and
opt values must be equal"). With a dynamic profile every DLA layer would fall back to the GPU, so a DLA
engine is built for one shape, each input at its IOSpec `opt` point; the op report shows what the DLA would
run at that shape, and the engine then accepts that shape only."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from .. import agent
from ..artifact import Artifact, load_artifact, versions
from ..errors import EdgeKitError, UsageError
from ..fsutil import atomic_dir, write_json, write_text
from ..hardware import HardwareProfile
from ..io import IOSpec
from .tensorrt_ops import OpReport, check_onnx, report_rows, table_for

ENGINE = "model.engine"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024
SHOWN_NODES = 3  # node names per unsupported op type in the error
# trtexec flags per precision, as build_engine.py sets them: fp32 without TF32 (on by default, and it would
# round Ampere's matmuls and convolutions to 10 mantissa bits); int8 with fp16 for layers outside Q/DQ.
PRECISION_FLAGS = {"fp32": ["--noTF32"], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}

Profile = dict[str, dict[str, list[int]]]


def optimization_profile(io: IOSpec, static: bool = False) -> Profile:
    """min/opt/max shape per input from the IOSpec dim ranges; `static` pins all three to `opt` (DLA)."""
    return {
        t.name: {p: list(io.concrete_shape(t, "opt" if static else p)) for p in ("min", "opt", "max")}
        for t in io.inputs
    }


def write_bundle(
    onnx_path: Path,
    io: IOSpec,
    profile: HardwareProfile,
    precision: str,
    out_dir: Path,
    parent: str,
    meta: Mapping[str, Any],
    dla_core: int | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
) -> Artifact:
    """Check `onnx_path` against the profile's TensorRT, then write the bundle to `out_dir` atomically.

    INT8 means explicit quantization: the ONNX must carry Q/DQ nodes (no calibrator runs on the device).
    `dla_core` makes the bundle's default build a DLA one (static shapes, GPU fallback allowed)."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    trt = _required_tensorrt(profile)
    _check_request(profile, precision, dla_core, workspace_mb)
    if not onnx_path.is_file():
        raise UsageError(f"ONNX file not found: {onnx_path}")
    model = onnx.load(str(onnx_path))
    names = {i.name for i in model.graph.input}
    if missing := [n for n in io.input_names if n not in names]:
        raise UsageError(f"{onnx_path.name} has no input(s) {missing}", "export it with the same IOSpec")
    if precision == "int8" and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise UsageError(
            f"{onnx_path.name} has no Q/DQ nodes; TensorRT INT8 bundles take an explicitly quantized ONNX",
            "quantize it first (the export's int8 stage writes the Q/DQ model)",
        )
    # Where the device has a DLA, the report also says what it would run, at the static shape it would run.
    opt_shapes = {t.name: io.concrete_shape(t, "opt") for t in io.inputs}
    dla = profile.dla_cores > 0
    report = check_onnx(model, trt, dla=dla, precision=precision, shapes=opt_shapes if dla else None)
    _require_parses(report, onnx_path)
    opt_profile = optimization_profile(io, static=dla_core is not None)
    bundle_meta = {
        **meta,
        "requires": {"tensorrt": trt, "jetpack": profile.software.get("jetpack")},
        "dla_core": dla_core,
        "workspace_mb": workspace_mb,
        "optimization_profile": opt_profile,
        "op_check": {k: v for k, v in report.to_dict().items() if k != "nodes"},
        "versions": versions("torch", "onnx"),
    }
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        write_json(tmp / "profile.json", opt_profile)
        write_json(tmp / "op_report.json", report.to_dict())
        write_text(tmp / "build_engine.py", BUILD_SCRIPT)
        # The device side of `edgekit build/profile/validate --remote`, for a device without EdgeKit; by hand:
        # `python3 edgekit_agent.py facts > facts.json` for `validate --measurements` of trtexec's files.
        shutil.copyfile(agent.__file__, tmp / agent.AGENT)
        write_text(tmp / "build_engine.sh", trtexec_script(opt_profile, precision, workspace_mb, dla_core))
        for script in ("build_engine.py", "build_engine.sh", agent.AGENT):
            os.chmod(tmp / script, 0o755)
        Artifact("tensorrt", precision, tmp, "model.onnx", io, parent, bundle_meta).write_manifest()
    return Artifact("tensorrt", precision, out_dir, "model.onnx", io, parent, bundle_meta)


def _required_tensorrt(profile: HardwareProfile) -> str:
    trt = profile.software.get("tensorrt")
    if not trt:
        raise UsageError(
            f"profile '{profile.name}' names no TensorRT version", "set software.tensorrt, e.g. tensorrt: '10.3'"
        )
    table_for(trt)  # an unknown version fails here, naming the known ones
    return trt


def _check_request(profile: HardwareProfile, precision: str, dla_core: int | None, workspace_mb: int) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown TensorRT precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if precision not in profile.precisions:
        raise UsageError(f"profile '{profile.name}' does not support {precision}", f"it supports {profile.precisions}")
    if workspace_mb <= 0:
        raise UsageError(f"workspace must be positive, got {workspace_mb} MB")
    if dla_core is None:
        return
    if not 0 <= dla_core < profile.dla_cores:
        raise UsageError(
            f"profile '{profile.name}' has {profile.dla_cores} DLA core(s); core {dla_core} does not exist",
            f"use 0..{profile.dla_cores - 1}" if profile.dla_cores else "build for the GPU (no --dla-core)",
        )
    if precision == "fp32":
        raise UsageError("the DLA runs fp16 and int8 only", "choose --precision fp16 or int8 for a DLA build")


def _require_parses(report: OpReport, onnx_path: Path) -> None:
    """One line naming what TensorRT cannot parse: per op type and reason, its first nodes; then model issues."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node, op, status, why in report_rows(report, problems_only=True):
        if status == "unsupported":
            groups.setdefault((op, why), []).append(node)
    problems = []
    for (op, why), nodes in groups.items():
        shown = ", ".join(nodes[:SHOWN_NODES]) + (", ..." if len(nodes) > SHOWN_NODES else "")
        problems.append(f"{op} ({shown}; {len(nodes)} node(s)): {why}")
    if problems := problems + list(report.model_issues):  # the model, as given, cannot go to this target
        raise UsageError(
            f"TensorRT {report.requested} cannot parse {onnx_path.name}: {'; '.join(problems)}",
            "change those ops in the model, or target a device with a newer TensorRT",
        )


def trtexec_script(opt_profile: Profile, precision: str, workspace_mb: int, dla_core: int | None) -> str:
    """build_engine.sh: the trtexec command line that builds the same engine as build_engine.py."""

    def shapes(point: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, p[point]))}" for name, p in opt_profile.items())

    flags = [
        "--onnx=model.onnx",
        "--saveEngine=model.engine.tmp",
        *(f"--{p}Shapes={shapes(p)}" for p in ("min", "opt", "max")),
        *PRECISION_FLAGS[precision],
        "--timingCacheFile=timing.cache",
        f"--memPoolSize=workspace:{workspace_mb}",  # MiB; --workspace is gone in TensorRT 10
        *([f"--useDLACore={dla_core}", "--allowGPUFallback"] if dla_core is not None else []),
    ]
    lines = " \\\n  ".join(shlex.quote(f) for f in flags)
    return f"""#!/usr/bin/env bash
# Build model.engine with trtexec on the device: the engine build_engine.py makes, as one command line.
# TRTEXEC=/path/to/trtexec overrides the binary; extra arguments are passed to trtexec.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
"$TRTEXEC" \\
  {lines} \\
  "$@"
mv -f model.engine.tmp model.engine
"""


# -- on the device --------------------------------------------------------------------------------------------


def gpu_visible() -> bool:
    """Whether this machine exposes a CUDA GPU: a Jetson (Tegra) or a driver-visible discrete GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    if Path("/etc/nv_tegra_release").exists() or Path("/dev/nvhost-ctrl-gpu").exists():
        return True
    return Path("/dev/nvidiactl").exists() and any(Path("/dev").glob("nvidia[0-9]*"))


def build_engine(
    bundle_dir: Path,
    dla_core: int | None = None,
    workspace_mb: int | None = None,
    timeout_s: float = 3600.0,
) -> Path:
    """Build the bundle's engine here by running its build_engine.py (which must be the script this EdgeKit writes)
    with this Python; returns model.engine.

    `dla_core` and `workspace_mb` default to the bundle's. Refuses (one line) where TensorRT or a GPU is
    missing: engines can only be built on the device that will run them."""
    bundle = Path(bundle_dir)
    art = load_artifact(bundle)
    if not (bundle / "build_engine.py").is_file():  # what makes a directory a bundle
        raise UsageError(f"{bundle} holds a {art.format} artifact, not a TensorRT bundle", "pass a tensorrt bundle")
    # The manifest's hashes prove the files match the manifest, not who wrote them: run only the script this
    # EdgeKit writes, so a bundle from elsewhere cannot make `edgekit build` execute its own code.
    if (bundle / "build_engine.py").read_text() != BUILD_SCRIPT:
        raise UsageError(
            f"{bundle}/build_engine.py is not the build script this EdgeKit writes",
            "re-export the bundle with this EdgeKit (or, if you trust it, run `python3 build_engine.py` yourself)",
        )
    if importlib.util.find_spec("tensorrt") is None:
        raise UsageError(
            "building a TensorRT engine needs the tensorrt Python package, which is not installed here",
            f"copy the bundle to the device and run `edgekit build {bundle.name}` or `bash build_engine.sh` there",
        )
    if not gpu_visible():
        raise EdgeKitError(
            "no CUDA GPU is visible here; TensorRT builds engines on the GPU that will run them",
            "run this on the Jetson (or GPU host) the bundle is for",
        )
    dla = art.meta.get("dla_core") if dla_core is None else dla_core
    cmd = [sys.executable, str(bundle / "build_engine.py"), "--precision", art.precision]
    cmd += ["--workspace-mb", str(workspace_mb or art.meta.get("workspace_mb", DEFAULT_WORKSPACE_MB))]
    cmd += ["--dla-core", str(dla)] if dla is not None else ["--gpu"]
    try:
        proc = subprocess.run(cmd, cwd=bundle, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise EdgeKitError(f"the engine build did not finish in {timeout_s:.0f} s", "raise timeout_s") from e
    if proc.returncode != 0:
        raise EdgeKitError(
            f"build_engine.py failed (exit {proc.returncode})",
            "its last line above says why; `python3 build_engine.py --verbose` shows the builder log",
        )
    record_engine(bundle, json.loads((bundle / "engine.json").read_text()))
    return bundle / ENGINE


def record_engine(bundle: Path, info: Mapping[str, Any]) -> None:
    """Add a built engine to its bundle's manifest: its build record in the meta, and (with every file) its hash."""
    art = load_artifact(bundle)  # the bundle's other files must still match before the manifest is rewritten
    dataclasses.replace(art, meta={**art.meta, "engine": dict(info)}).write_manifest()


# The standalone build script written into every bundle. It imports only the standard library until its
# arguments are valid, so --help and argument errors work anywhere; tensorrt is imported to build.
BUILD_SCRIPT = r'''#!/usr/bin/env python3
"""Build this bundle's TensorRT engine (model.engine) on the device that will run it.

Written by EdgeKit. Needs the TensorRT Python package of the device's SDK: TensorRT 8.5 (JetPack 5.1) or
10.x (JetPack 6.1+). Defaults come from manifest.json next to this script. Exit codes: 0 built,
1 build failed, 2 bad arguments.

  python3 build_engine.py                  # the bundle's precision, GPU or its DLA core
  python3 build_engine.py --dla-core 0     # DLA core 0 (static shapes at the profile's opt point)
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")  # one line, for callers that show it as-is


def fail(message):
    print(f"build_engine.py: error: {message}", file=sys.stderr)
    return 1


def read_manifest():
    try:
        return json.loads((HERE / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def read_profile(parser, path):
    """{input: {"min": [...], "opt": [...], "max": [...]}} with min <= opt <= max, all positive."""
    try:
        profile = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        parser.error(f"cannot read the profile {path}: {e}")
    if not isinstance(profile, dict) or not profile:
        parser.error(f"{path} must map each input name to its min/opt/max shapes")
    for name, p in profile.items():
        shapes = [p.get(k) if isinstance(p, dict) else None for k in ("min", "opt", "max")]
        ok = all(isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s) for s in shapes)
        if not ok or len({len(s) for s in shapes}) != 1:
            parser.error(f"{path}: input '{name}' needs min/opt/max lists of positive ints of equal length")
        if any(not lo <= o <= hi for lo, o, hi in zip(*shapes)):  # noqa: B905 (JetPack 5 has Python 3.8)
            parser.error(f"{path}: input '{name}' needs min <= opt <= max in every dim")
    return profile


def parse_args(argv):
    manifest = read_manifest()
    meta = manifest.get("meta", {})
    p = Parser(prog="build_engine.py", description="Build model.engine from model.onnx with TensorRT.")
    p.add_argument("--onnx", type=Path, default=HERE / "model.onnx", help="the ONNX model (default: the bundle's)")
    p.add_argument("--profile", type=Path, default=HERE / "profile.json", help="min/opt/max shapes per input")
    p.add_argument("--engine", type=Path, default=HERE / "model.engine", help="where to write the engine")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=manifest.get("precision"),
        help="fp16 sets the FP16 flag; int8 takes the ONNX's Q/DQ nodes (no calibration)",
    )
    p.add_argument("--workspace-mb", type=int, default=meta.get("workspace_mb", 1024), help="builder workspace")
    p.add_argument("--timing-cache", type=Path, default=HERE / "timing.cache", help="loaded if present, saved after")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dla-core", type=int, default=meta.get("dla_core"), help="build for this DLA core")
    where.add_argument("--gpu", action="store_true", help="build for the GPU even if the bundle names a DLA core")
    p.add_argument("--verbose", action="store_true", help="the builder's full log")
    args = p.parse_args(argv)
    if args.gpu:
        args.dla_core = None
    if args.precision is None:
        p.error("--precision is required (no manifest.json next to this script)")
    for path in (args.onnx, args.profile):
        if not path.is_file():
            p.error(f"{path} does not exist")
    if not args.engine.parent.is_dir():
        p.error(f"the engine's directory {args.engine.parent} does not exist")
    if args.workspace_mb <= 0:
        p.error(f"--workspace-mb must be positive, got {args.workspace_mb}")
    if args.dla_core is not None and args.dla_core < 0:
        p.error(f"--dla-core must be 0 or more, got {args.dla_core}")
    if args.dla_core is not None and args.precision == "fp32":
        p.error("the DLA runs fp16 and int8 only: pass --precision fp16 or int8, or drop --dla-core")
    profile = read_profile(p, args.profile)
    if args.dla_core is not None:  # DLA has no dynamic dims: build every input at its opt shape
        profile = {k: {"min": v["opt"], "opt": v["opt"], "max": v["opt"]} for k, v in profile.items()}
    return args, profile


def write_atomic(path, data):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(args, profile, trt):
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # no CUDA device: TensorRT raises from the constructor
        return fail(f"TensorRT {trt.__version__} cannot create a builder (no usable CUDA GPU?): {e}")
    # TensorRT 8.5 needs explicit batch; in 10.x every network is explicit-batch and the flag is deprecated.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(args.onnx)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return fail(f"the ONNX parser rejected {args.onnx.name}: {errors[0] if errors else 'no detail'}{more}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if args.precision == "fp32":  # TF32 is on by default and would round matmuls and convolutions on Ampere
        config.clear_flag(trt.BuilderFlag.TF32)
    if args.precision in ("fp16", "int8"):  # int8: layers outside the Q/DQ regions run in fp16 (the DLA needs it)
        config.set_flag(trt.BuilderFlag.FP16)
    if args.precision == "int8":
        # Explicit quantization: the scales are the ONNX's Q/DQ nodes, so no calibrator. The network is weakly
        # typed (8.5 has no strongly typed networks, and fp16 comes from the flag), and weakly typed Q/DQ networks
        # take INT8 kernels only with the INT8 flag set.
        config.set_flag(trt.BuilderFlag.INT8)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            return fail(f"{args.profile.name} has no shapes for the network input '{name}'")
        opt.set_shape(name, profile[name]["min"], profile[name]["opt"], profile[name]["max"])
    config.add_optimization_profile(opt)
    if args.dla_core is not None:
        if args.dla_core >= builder.num_DLA_cores:
            return fail(f"DLA core {args.dla_core} requested; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = args.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers the DLA cannot run go to the GPU
    cache_bytes = args.timing_cache.read_bytes() if args.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # made on another device or TensorRT
        print(f"build_engine.py: note: ignoring {args.timing_cache.name} (other device or version)", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return fail("TensorRT returned no engine; rerun with --verbose for the builder log")
    seconds = time.perf_counter() - start
    write_atomic(args.engine, bytes(serialized))
    write_atomic(args.timing_cache, bytes(config.get_timing_cache().serialize()))
    info = {
        "tensorrt": trt.__version__,
        "precision": args.precision,
        "dla_core": args.dla_core,
        "workspace_mb": args.workspace_mb,
        "profile": profile,
        "build_seconds": round(seconds, 1),
    }
    if args.dla_core is not None:  # the builder's own answer to "what runs on the DLA"
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        report = [{"layer": la.name, "type": str(la.type), "dla": config.can_run_on_DLA(la)} for la in layers]
        write_atomic(args.engine.with_name("dla_layers.json"), json.dumps(report, indent=2).encode())
        info["dla_layers"] = sum(r["dla"] for r in report)
        info["gpu_layers"] = len(report) - info["dla_layers"]
    write_atomic(args.engine.with_name("engine.json"), json.dumps(info, indent=2, sort_keys=True).encode())
    print(
        f"built {args.engine} ({args.engine.stat().st_size / 1e6:.1f} MB) with TensorRT {trt.__version__} "
        f"in {seconds:.0f} s"
    )
    return 0


def main(argv=None):
    args, profile = parse_args(argv)
    try:
        import tensorrt as trt
    except ImportError:
        return fail("the tensorrt Python package is not installed (JetPack ships it: apt install python3-libnvinfer)")
    expected = read_manifest().get("meta", {}).get("requires", {}).get("tensorrt")
    if expected and expected.split(".")[:2] != trt.__version__.split(".")[:2]:
        print(
            f"build_engine.py: note: the bundle was checked for TensorRT {expected}; this is {trt.__version__}",
            file=sys.stderr,
        )
    return build(args, profile, trt)


if __name__ == "__main__":
    sys.exit(main())
'''
