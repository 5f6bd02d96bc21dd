"""Per-operator time breakdown from each runtime's own profiler: onnxruntime's session profiling and
OpenVINO's performance counters. Profiling costs time itself, so it runs on a separate session after
the latency measurement, never during it. TensorRT's layer timing runs where the engine does (on the
Jetson). ExecuTorch's profiler needs a runtime built with ETDump, which the Python package is not, so its
breakdown is reported as unavailable. Each format names its profiler (edgekit/formats/)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..agent import summarize
from ..artifact import Artifact

OpEvent = tuple[str, str, float]  # (node name, op type, microseconds)
WARMUP = 2  # profiled runs left out: first-run allocations and kernel selection


def ort_ops(art: Artifact, feeds: Mapping[str, np.ndarray], runs: int, threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort

    from .ort import session_options

    so = session_options(threads)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgekit-ortprof-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(art.path), so, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP + runs):
            session.run(None, dict(feeds))
        trace = json.loads(Path(session.end_profiling()).read_text())
    # Each inference is one "model_run" span; kernels of the warm-up runs end before the first kept span.
    spans = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = spans[WARMUP]
    events = (
        (e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", "?"), float(e["dur"]))
        for e in trace
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start
    )
    return summarize(events, runs, f"onnxruntime {ort.__version__}")


def openvino_ops(art: Artifact, feeds: Mapping[str, np.ndarray], runs: int, threads: int | None) -> dict[str, Any]:
    import openvino as ov

    from .openvino import HINTS

    config: dict[str, object] = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": HINTS[art.precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(art.path), "CPU", config).create_infer_request()
    events: list[OpEvent] = []
    for i in range(WARMUP + runs):
        request.infer(dict(feeds))
        if i >= WARMUP:  # the counters hold the last inference only
            events += [
                (p.node_name, f"{p.node_type} ({p.exec_type})", p.real_time.total_seconds() * 1e6)
                for p in request.profiling_info
                if p.status == p.Status.EXECUTED
            ]
    return summarize(events, runs, f"openvino {ov.get_version().split('-')[0]}")


def tensorrt_ops(art: Artifact, feeds: Mapping[str, np.ndarray], runs: int, threads: int | None) -> dict[str, Any]:
    """TensorRT's per-layer times (IProfiler), on the device that built the engine. Layer types come from the
    engine inspector where the engine was built with detailed profiling verbosity; otherwise each fused layer
    is its own entry."""
    import tensorrt as trt

    from .tensorrt import TensorRTRunner

    runner = TensorRTRunner(art)
    events: list[OpEvent] = []
    kinds: dict[str, str] = {}
    try:
        info = json.loads(
            runner.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        )
        kinds = {la["Name"]: la.get("LayerType", "layer") for la in info.get("Layers", []) if isinstance(la, dict)}
    except (AttributeError, json.JSONDecodeError, TypeError):
        pass  # an older TensorRT without the inspector

    class Timer(trt.IProfiler):  # type: ignore[misc]
        def report_layer_time(self, layer_name: str, ms: float) -> None:
            events.append((layer_name, kinds.get(layer_name, "layer"), ms * 1e3))

    for _ in range(WARMUP):
        runner.run(feeds)
    runner.context.profiler = Timer()
    for _ in range(runs):
        runner.run(feeds)
    return summarize(events, runs, runner.name)
