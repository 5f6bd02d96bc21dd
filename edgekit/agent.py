#!/usr/bin/env python3
"""EdgeKit's device side: what a device needs to measure an artifact when EdgeKit itself is not installed there.

One file, copied over ssh (or shipped in a TensorRT bundle), run by the device's own Python: the standard library
of Python 3.8 (JetPack 5) and up, numpy and the runtime where present (onnxruntime, openvino, the TensorRT Python
bindings), else JetPack's `trtexec` alone. TensorRT's Python bindings exist only for the system Python, so the
agent must run there: `vermin --target=3.8-` checks it in the test suite. It imports nothing from EdgeKit; EdgeKit
imports its parsers (cpu facts, trtexec and tegrastats formats, the op summary), so both sides read alike.

  python3 edgekit_agent.py facts                         # the device's identity, runtimes and power mode
  python3 edgekit_agent.py build BUNDLE [--dla-core N]   # the engine, with build_engine.py or trtexec
  python3 edgekit_agent.py profile ARTIFACT --feeds DIR  # latency per batch size, ops, energy (tegrastats)
  python3 edgekit_agent.py infer ARTIFACT --chunks DIR --out DIR   # outputs for host-side scoring

Every command prints one JSON object on stdout. A failure is one line on stderr,
`edgekit-agent: error: <step>: <what> (<fix>)`, exit 1 (2 for bad arguments); outputs are written to a temporary
name and renamed, so a run cut off leaves nothing half-written."""

from __future__ import annotations

import argparse
import ast
import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from array import array as values_of
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

AGENT = "edgekit_agent.py"  # its name on the device and in a bundle
ENGINE = "model.engine"
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)  # JetPack installs trtexec here, off PATH
# Flags that decide which kernels a runtime picks (x86 /proc/cpuinfo and Arm "Features" spellings).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm",
             "sve")  # fmt: skip
# Board input power first (Orin Nano/NX, Xavier: VDD_IN; Nano, TX2: POM_5V_IN); else the sum of the rails.
BOARD_RAILS = ("VDD_IN", "POM_5V_IN")
Raw = Tuple[str, Sequence[int], bytes]  # an array without numpy: (dtype name, shape, C-order little-endian bytes)
IDENTITY = ("cpu_model", "cpus", "isa", "device_model", "l4t", "android_soc")  # what a profile's identity reads
RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


class Fail(Exception):
    """A failure the user can act on: the step, what went wrong and the fix, printed as one line."""

    def __init__(self, step: str, message: str, fix: str = "") -> None:
        super().__init__(f"{step}: {message}" + (f" ({fix})" if fix else ""))


# -- facts -----------------------------------------------------------------------------------------------------


def read_text(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def cpu_facts(cpuinfo: str) -> Tuple[str, List[str]]:
    """(model name, the ISA flags of ISA_FLAGS present) from /proc/cpuinfo text."""
    model, flags = platform.processor() or platform.machine(), set()  # type: str, set
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def l4t_release(text: Optional[str]) -> Optional[str]:
    """'# R36 (release), REVISION: 4.3, GCID: ...' (/etc/nv_tegra_release) -> '36.4.3'."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text or "")
    return "{}.{}".format(m.group(1), m.group(2)) if m else None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_text(cmd: Sequence[str], timeout: float = 10) -> Optional[str]:
    """A command's stdout, or None when it is missing, fails or hangs."""
    try:
        p = subprocess.run(list(cmd), check=False, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.decode(errors="replace").strip() if p.returncode == 0 else None


def identity_facts() -> Dict[str, Any]:
    """What a hardware profile's `identity` is matched against (None where the host has no such fact)."""
    model, isa = cpu_facts(read_text("/proc/cpuinfo") or "")
    soc = run_text(["getprop", "ro.soc.model"]) if shutil.which("getprop") else None
    return {"cpu_model": model, "cpus": usable_cpus(), "isa": isa, "device_model": read_text("/proc/device-tree/model"),
            "l4t": l4t_release(read_text("/etc/nv_tegra_release")), "android_soc": soc}  # fmt: skip


def module_version(name: str) -> Optional[str]:
    try:
        module = __import__(name)
    except Exception:  # a runtime whose native libraries fail to load is as absent as a missing one
        return None
    if name == "openvino":
        return str(module.get_version()).split("-")[0]
    return str(getattr(module, "__version__", "?"))


def trtexec() -> Optional[str]:
    found = os.environ.get("TRTEXEC") or shutil.which("trtexec")
    return found or next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def cuda_version() -> Optional[str]:
    try:
        return json.loads(Path("/usr/local/cuda/version.json").read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        m = re.search(r"CUDA Version ([\d.]+)", read_text("/usr/local/cuda/version.txt") or "")
        return m.group(1) if m else None


def tensorrt_version() -> Optional[str]:
    """The TensorRT Python bindings' version, else the installed libnvinfer package's (JetPack's apt packages)."""
    found = module_version("tensorrt")
    if found:
        return found
    listing = run_text(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "libnvinfer[0-9]*"]) or ""
    m = re.search(r"^libnvinfer\d+ (\d+\.\d+\.\d+)", listing, re.MULTILINE)
    return m.group(1) if m else None


def clocks_locked() -> Optional[bool]:
    """Whether the CPU and GPU run at fixed clocks (jetson_clocks sets min = max); None where sysfs does not say."""
    pairs = [("/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq", "/sys/devices/system/cpu/cpu0/cpufreq/"
              "scaling_max_freq")]  # fmt: skip
    for dev in sorted(Path("/sys/class/devfreq").glob("*")) if Path("/sys/class/devfreq").is_dir() else []:
        if "gpu" in dev.name or "gv11b" in dev.name or "ga10b" in dev.name:
            pairs.append((str(dev / "min_freq"), str(dev / "max_freq")))
    seen = [(read_text(lo), read_text(hi)) for lo, hi in pairs]
    seen = [(lo, hi) for lo, hi in seen if lo and hi]
    return all(lo == hi for lo, hi in seen) if seen else None


def power_mode() -> Optional[str]:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' (the mode's name), or None off a Jetson."""
    m = re.search(r"NV Power Mode:\s*(.+)", run_text(["nvpmodel", "-q"]) or "")
    return m.group(1).strip() if m else None


def facts() -> Dict[str, Any]:
    return {
        **identity_facts(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "runtimes": {name: module_version(name) for name in ("numpy", "onnxruntime", "openvino", "tensorrt")},
        "trtexec": trtexec(),
        "tensorrt": tensorrt_version(),
        "cuda": cuda_version(),
        "power_mode": power_mode(),
        "clocks_locked": clocks_locked(),
        "tegrastats": shutil.which("tegrastats"),
    }


# -- files: manifest, .npy/.npz without numpy (trtexec reads and writes raw buffers) --------------------------------


def manifest(directory: Path) -> Dict[str, Any]:
    """The artifact's manifest, with every file checked against its hash: a partial copy is refused."""
    try:
        m = json.loads((directory / "manifest.json").read_text())
        files = m["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Fail("reading the artifact", "{} has no readable manifest.json ({})".format(directory, e),
                   "copy the whole artifact directory") from e  # fmt: skip
    for name, sha in files.items():
        path = directory / name
        digest = hashlib.sha256()
        try:
            with open(str(path), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise Fail("reading the artifact", "{} is missing".format(name), "copy the artifact again") from e
        if digest.hexdigest() != sha:
            raise Fail("reading the artifact", "{} does not match its manifest hash".format(name),
                       "copy the artifact again")  # fmt: skip
    return m


NPY_DTYPES = {"<f4": "float32", "<f2": "float16", "<i8": "int64", "<i4": "int32", "|b1": "bool", "|u1": "uint8",
              "|i1": "int8", "<f8": "float64"}  # fmt: skip


def read_npz(path: Path) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    """{name: (dtype, shape, C-order little-endian bytes)} of an uncompressed .npz, with the standard library."""
    out = {}
    with zipfile.ZipFile(str(path)) as z:
        for member in z.namelist():
            data = z.read(member)
            if data[:6] != b"\x93NUMPY":
                raise Fail("reading inputs", "{}:{} is not a .npy array".format(path.name, member))
            major = data[6]
            size, start = (struct.unpack("<H", data[8:10])[0], 10) if major == 1 else (
                struct.unpack("<I", data[8:12])[0], 12)  # fmt: skip
            header = ast.literal_eval(data[start : start + size].decode("latin1"))
            if header["fortran_order"] or header["descr"] not in NPY_DTYPES:
                raise Fail("reading inputs", "{}:{} is {} (C order, one of {} expected)".format(
                    path.name, member, header["descr"], ", ".join(NPY_DTYPES)))  # fmt: skip
            name = member[:-4] if member.endswith(".npy") else member
            out[name] = (NPY_DTYPES[header["descr"]], tuple(header["shape"]), data[start + size :])
    return out


def npy_bytes(dtype: str, shape: Sequence[int], raw: bytes) -> bytes:
    descr = {v: k for k, v in NPY_DTYPES.items()}[dtype]
    header = "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}".format(descr, tuple(shape)).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"  # the array starts 64-byte aligned
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + raw


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, str(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_npz(path: Path, arrays: Dict[str, Tuple[str, Sequence[int], bytes]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as z:
            for name, (dtype, shape, raw) in arrays.items():
                z.writestr(name + ".npy", npy_bytes(dtype, shape, raw))
        os.replace(tmp, str(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- timing and the op summary ------------------------------------------------------------------------------------


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile of sorted values."""
    pos = (len(sorted_ms) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def latency_stats(ms: Sequence[float]) -> Dict[str, float]:
    """The shape of `edgekit profile`'s latency_ms: runs, p50, p90, p95, p99, mean, std (population)."""
    s = sorted(ms)
    mean = sum(s) / len(s)
    std = (sum((x - mean) ** 2 for x in s) / len(s)) ** 0.5
    stats = {"p{}".format(q): round(percentile(s, q), 4) for q in (50, 90, 95, 99)}
    return {"runs": len(s), **stats, "mean": round(mean, 4), "std": round(std, 4)}


def time_calls(fn: Callable[[], object], warmup: int, runs: Optional[int], duration: float) -> List[float]:
    """Milliseconds per call: `runs` calls, or as many as fit in `duration` seconds (at least 10)."""
    for _ in range(warmup):
        fn()
    ms = []  # type: List[float]
    deadline = time.perf_counter() + duration
    while True:
        start = time.perf_counter()
        fn()
        end = time.perf_counter()
        ms.append((end - start) * 1e3)
        if (len(ms) >= runs) if runs else (len(ms) >= 10 and end >= deadline):
            return ms


def summarize(events: Iterable[Tuple[str, str, float]], runs: int, runtime: str, top: int = 10) -> Dict[str, Any]:
    """Mean time per inference by op type and for the slowest nodes, in ms, largest first, from (node, op type,
    microseconds) events."""
    by_node = defaultdict(float)  # type: Dict[Tuple[str, str], float]
    for node, op, us in events:
        by_node[(node, op)] += us
    by_type = defaultdict(lambda: [0.0, 0])  # type: Dict[str, List[float]]
    for (_, op), us in by_node.items():
        by_type[op][0] += us
        by_type[op][1] += 1
    total = sum(t for t, _ in by_type.values()) or 1.0
    return {
        "runtime": runtime,
        "runs": runs,
        "total_ms": round(total / runs / 1e3, 4),
        "by_op_type": [
            {"op": op, "ms": round(t / runs / 1e3, 4), "share": round(t / total, 4), "nodes": int(n)}
            for op, (t, n) in sorted(by_type.items(), key=lambda kv: -kv[1][0])
        ],
        "top_nodes": [
            {"node": node, "op": op, "ms": round(us / runs / 1e3, 4)}
            for (node, op), us in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


def layer_type(name: str) -> str:
    """An op type for a TensorRT layer, from its name: the ONNX node names it fused ('/fusion/fc/Gemm +
    /fusion/Relu' -> 'Gemm+Relu'); TensorRT's own layers keep their first word ('Reformatting CopyNode ...')."""
    if name.startswith(("Reformatting", "reformat")):
        return "Reformat"
    parts = [p.strip().split("/")[-1] for p in re.split(r" \+ ", name)]
    kinds = [re.sub(r"(_\d+)+$", "", p) or "?" for p in parts]
    return "+".join(dict.fromkeys(kinds))  # each kind once, in order


# -- trtexec's JSON exports (followed: TensorRT 8.5 and 10.3 samples/common/sampleReporting.cpp) ------------------


def trtexec_times(records: Any) -> List[float]:
    """Per-inference latency (ms) of `trtexec --exportTimes`: a list of {"startEnqMs", ..., "h2dMs", "computeMs",
    "d2hMs", "latencyMs"} (TensorRT 8.x and 10.x; warm-up runs are already left out). latencyMs is H2D + compute +
    D2H, or compute alone under --noDataTransfers."""
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ValueError("not a list of trtexec timing records")
    try:
        return [float(r["latencyMs"]) for r in records]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("a record has no numeric latencyMs ({})".format(e)) from e


def trtexec_layers(records: Any, runtime: str = "tensorrt (trtexec)") -> Dict[str, Any]:
    """The op summary of `trtexec --exportProfile`: [{"count": N}, {"name", "timeMs", "averageMs", "medianMs"
    (8.5 and later), "percentage"}, ...]; averageMs is per inference."""
    if not isinstance(records, list) or not records or not isinstance(records[0], dict) or "count" not in records[0]:
        raise ValueError('not a trtexec profile (it starts with {"count": N})')
    try:
        runs = int(records[0]["count"])
        events = [(str(r["name"]), layer_type(str(r["name"])), float(r["averageMs"]) * 1e3 * runs) for r in records[1:]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("a layer record has no name or averageMs ({})".format(e)) from e
    return summarize(events, max(runs, 1), runtime)


# -- energy: tegrastats ---------------------------------------------------------------------------------------------


def board_power_mw(line: str) -> Optional[Tuple[str, float]]:
    """(rail, instantaneous mW) of one tegrastats line: the board input rail where it reports one, else the sum of
    its rails. 'VDD_IN 4936mW/4936mW' (JetPack 5/6) and 'POM_5V_IN 2035/2035' (JetPack 4) alike."""
    rails = {name: float(now) for name, now, _ in RAIL.findall(line)}
    for name in BOARD_RAILS:
        if name in rails:
            return name, rails[name]
    return ("sum of rails", sum(rails.values())) if rails else None


class Tegrastats:
    """`tegrastats --interval MS` sampled in the background while the timed calls run."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.exe = shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.lines = []  # type: List[str]
        self.proc = None  # type: Optional[subprocess.Popen]
        self.error = None if self.exe else "tegrastats not found on the device (it ships with JetPack)"

    def __enter__(self) -> "Tegrastats":
        if self.exe:
            try:
                self.proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)  # fmt: skip
            except OSError as e:
                self.error = "tegrastats cannot run: {}".format(e)
            else:
                threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.lines and self.error is None:
            why = (err or b"").decode(errors="replace").strip().splitlines()
            self.error = "tegrastats printed nothing readable" + (": " + why[-1] if why else "")

    def energy(self, ms: Sequence[float]) -> Dict[str, Any]:
        """Mean board power over the timed calls and the energy per call (mW x s = mJ)."""
        samples = [s for s in (board_power_mw(line) for line in self.lines[1:]) if s]  # the first: before timing
        if not samples:
            return {"energy_mj": None, "why": self.error or "tegrastats reported no power rail"}
        mean_mw = sum(mw for _, mw in samples) / len(samples)
        per_call_s = sum(ms) / len(ms) / 1e3
        return {"energy_mj": round(mean_mw * per_call_s, 4), "mean_power_mw": round(mean_mw, 1),
                "rail": samples[0][0], "samples": len(samples), "source": "tegrastats"}  # fmt: skip


# -- runtimes -------------------------------------------------------------------------------------------------------


def numpy_arrays(feeds: Dict[str, Tuple[str, Tuple[int, ...], bytes]]) -> Dict[str, Any]:
    import numpy as np

    return {k: np.frombuffer(raw, dtype=dtype).reshape(shape).copy() for k, (dtype, shape, raw) in feeds.items()}


def as_raw(arrays: Dict[str, Any]) -> Dict[str, Tuple[str, Sequence[int], bytes]]:
    import numpy as np

    out = {}
    for k, array in arrays.items():
        a = np.ascontiguousarray(array)
        out[k] = (a.dtype.name, a.shape, a.astype(a.dtype.newbyteorder("<")).tobytes())
    return out


class OrtRuntime:
    """onnxruntime on the CPU with EdgeKit's session options (intra-op threads, one inter-op thread)."""

    def __init__(self, path: Path, threads: Optional[int]) -> None:
        import onnxruntime as ort

        self.ort, self.path, self.threads = ort, path, threads
        self.session = ort.InferenceSession(str(path), self.options(), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = "onnxruntime " + ort.__version__

    def options(self) -> Any:
        so = self.ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        return so

    def run(self, feeds: Dict[str, Any]) -> Dict[str, Any]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    def bind(self, feeds: Dict[str, Any]) -> Callable[[], object]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        return lambda: self.session.run_with_iobinding(binding)

    def ops(self, feeds: Dict[str, Any], runs: int) -> Dict[str, Any]:
        so = self.options()
        so.enable_profiling = True
        with tempfile.TemporaryDirectory(prefix="edgekit-ortprof-") as tmp:
            so.profile_file_prefix = str(Path(tmp) / "ort")
            session = self.ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
            for _ in range(2 + runs):
                session.run(None, feeds)
            trace = json.loads(Path(session.end_profiling()).read_text())
        spans = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
        start = spans[2]  # the first two runs are warm-up: allocations and kernel selection
        events = ((e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"), float(e["dur"])) for e in trace
                  if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start)  # fmt: skip
        return summarize(events, runs, self.name)


class OpenVINORuntime:
    """OpenVINO on the CPU with the inference precision EdgeKit sets (f16 for fp16 IRs, else f32)."""

    def __init__(self, path: Path, threads: Optional[int], precision: str) -> None:
        import openvino as ov

        self.config = {"INFERENCE_PRECISION_HINT": "f16" if precision == "fp16" else "f32",
                       "PERFORMANCE_HINT": "LATENCY"}  # type: Dict[str, object]  # fmt: skip
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.ov, self.path, self.core = ov, path, ov.Core()
        self.compiled = self.core.compile_model(str(path), "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.dynamic = any(i.get_partial_shape().is_dynamic for i in self.compiled.inputs)
        self.static = {}  # type: Dict[Tuple[Any, ...], Tuple[Any, Any]]
        self.name = "openvino " + str(ov.get_version()).split("-")[0]

    def compiled_for(self, feeds: Dict[str, Any]) -> Tuple[Any, Any]:
        """As EdgeKit's OpenVINO runner: compiled static per input-shape signature (up to 8), else dynamic."""
        if not self.dynamic:
            return self.compiled, self.request
        key = tuple(sorted((k, tuple(v.shape)) for k, v in feeds.items()))
        if key not in self.static and len(self.static) < 8:
            model = self.core.read_model(str(self.path))
            model.reshape({k: list(shape) for k, shape in key})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.static[key] = (compiled, compiled.create_infer_request())
        return self.static.get(key, (self.compiled, self.request))

    def run(self, feeds: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        compiled, request = self.compiled_for(feeds)
        result = request.infer(feeds)
        return {name: np.array(result[out]) for name, out in zip(self.outputs, compiled.outputs)}

    def bind(self, feeds: Dict[str, Any]) -> Callable[[], object]:
        request = self.compiled_for(feeds)[0].create_infer_request()
        for name, array in feeds.items():
            request.set_tensor(name, self.ov.Tensor(array, shared_memory=True))
        return request.infer

    def ops(self, feeds: Dict[str, Any], runs: int) -> Dict[str, Any]:
        compiled = self.ov.Core().compile_model(str(self.path), "CPU", {**self.config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer(feeds)
        totals = defaultdict(float)  # type: Dict[Tuple[str, str], float]
        for _ in range(runs):
            request.infer(feeds)
            for info in request.profiling_info:
                if info.status == info.Status.EXECUTED:
                    kind = "{} ({})".format(info.node_type, info.exec_type)
                    totals[(info.node_name, kind)] += info.real_time.total_seconds() * 1e6
        return summarize(((n, k, us) for (n, k), us in totals.items()), runs, self.name)


class Cuda:
    """The CUDA runtime through ctypes: device memory, copies and a stream without cuda-python or pycuda, which a
    stock JetPack does not ship; libcudart does."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        names = [ctypes.util.find_library("cudart"), "libcudart.so", "/usr/local/cuda/lib64/libcudart.so"]
        for name in [n for n in names if n]:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise Fail("loading CUDA", "libcudart.so not found", "install JetPack's CUDA runtime (cuda-cudart)")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate", "loading CUDA")

    def check(self, code: int, what: str, step: str = "running the engine") -> None:
        if code != 0:
            raise Fail(step, "{} failed: {}".format(what, self.lib.cudaGetErrorString(code).decode()),
                       "check the GPU and its driver (tegrastats, nvidia-smi)")  # fmt: skip

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        args = (ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind, self.stream)
        self.check(self.lib.cudaMemcpyAsync(*args), "cudaMemcpyAsync")

    def sync(self) -> None:
        self.check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


class TensorRTRuntime:
    """A built model.engine through the TensorRT Python bindings (8.5 and later: tensors by name,
    execute_async_v3), device memory through libcudart."""

    def __init__(self, bundle: Path, meta: Dict[str, Any]) -> None:
        import tensorrt as trt

        self.trt = trt
        check_engine(bundle, meta, trt.__version__)
        if not hasattr(trt.IExecutionContext, "execute_async_v3"):
            raise Fail("loading the engine", "TensorRT {} is older than 8.5".format(trt.__version__),
                       "use JetPack 5.1 or later")  # fmt: skip
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        built = meta.get("engine", {})
        if built.get("dla_core") is not None:
            runtime.DLA_core = int(built["dla_core"])
        self.engine = runtime.deserialize_cuda_engine((bundle / ENGINE).read_bytes())
        if self.engine is None:
            raise Fail("loading the engine", "TensorRT {} cannot load {}".format(trt.__version__, ENGINE),
                       "rebuild it on this device: edgekit build --remote")  # fmt: skip
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.cuda = Cuda()
        self.buffers = {}  # type: Dict[str, Tuple[int, int]]
        self.name = "tensorrt " + trt.__version__ + (" dla:{}".format(built["dla_core"]) if built.get("dla_core")
                                                      is not None else "")  # fmt: skip

    def dtype(self, name: str) -> Any:
        import numpy as np

        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def stage(self, feeds: Dict[str, Any]) -> None:
        import numpy as np

        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtype(name))  # 8.5 binds int64 inputs as int32
            feeds[name] = arr
            if not self.context.set_input_shape(name, arr.shape):
                raise Fail("running the engine", "TensorRT rejected shape {} for '{}'".format(arr.shape, name),
                           "feed a shape inside the engine's optimization profile")  # fmt: skip
        for name in self.inputs + self.outputs:
            shape = feeds[name].shape if name in self.inputs else tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtype(name).itemsize
            ptr, cap = self.buffers.get(name, (0, 0))
            if nbytes > cap:
                if ptr:
                    self.cuda.lib.cudaFree(ctypes.c_void_p(ptr))
                ptr, cap = self.cuda.malloc(nbytes), nbytes
                self.buffers[name] = (ptr, cap)
            self.context.set_tensor_address(name, ptr)
        for name in self.inputs:
            self.cuda.copy(self.buffers[name][0], feeds[name].ctypes.data, feeds[name].nbytes, Cuda.H2D)

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream.value or 0):
            raise Fail("running the engine", "TensorRT failed to enqueue the engine")
        self.cuda.sync()

    def run(self, feeds: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        feeds = dict(feeds)
        self.stage(feeds)
        self.execute()
        out = {n: np.empty(tuple(self.context.get_tensor_shape(n)), self.dtype(n)) for n in self.outputs}
        for name, arr in out.items():
            self.cuda.copy(arr.ctypes.data, self.buffers[name][0], arr.nbytes, Cuda.D2H)
        self.cuda.sync()
        return out

    def bind(self, feeds: Dict[str, Any]) -> Callable[[], object]:
        """Inputs copied once; each call enqueues and waits, as `trtexec --noDataTransfers` times it."""
        self.stage(dict(feeds))
        return self.execute

    def ops(self, feeds: Dict[str, Any], runs: int) -> Dict[str, Any]:
        trt = self.trt

        class Layers(trt.IProfiler):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.ms = defaultdict(float)  # type: Dict[str, float]

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.ms[layer_name] += ms

        self.stage(dict(feeds))
        self.execute()  # warm-up before the profiler is attached
        profiler = Layers()
        self.context.profiler = profiler
        for _ in range(runs):
            self.execute()  # the profiler needs synchronous layer reports: one call at a time
        self.context.profiler = None
        return summarize(((n, layer_type(n), ms * 1e3) for n, ms in profiler.ms.items()), runs, self.name)


def check_engine(bundle: Path, meta: Dict[str, Any], version: str) -> None:
    """Refuse an engine that is missing or was built by another TensorRT: it would not load, or load wrongly."""
    if not (bundle / ENGINE).is_file():
        raise Fail("loading the engine", "{} has no {}".format(bundle.name, ENGINE),
                   "build it first: edgekit build --remote")  # fmt: skip
    built = str(meta.get("engine", {}).get("tensorrt") or "")
    if built and built.split(".")[:3] != version.split(".")[:3]:
        raise Fail("loading the engine", "{} was built with TensorRT {}; this device has {}".format(
            ENGINE, built, version), "rebuild it on this device: edgekit build --remote")  # fmt: skip


class TrtexecRuntime:
    """JetPack's trtexec alone (no TensorRT Python bindings or numpy): it times the engine itself and reads and
    writes raw buffers, so the agent never touches the engine."""

    def __init__(self, bundle: Path, meta: Dict[str, Any], exe: str) -> None:
        self.bundle, self.exe = bundle, exe
        dla = meta.get("engine", {}).get("dla_core")
        self.dla = [] if dla is None else ["--useDLACore={}".format(dla)]
        banner = subprocess.run([exe, "--help"], check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.version = trtexec_version(banner.stdout.decode(errors="replace")) or tensorrt_version() or "?"
        check_engine(bundle, meta, self.version)
        self.name = "tensorrt {} (trtexec)".format(self.version)

    def call(self, args: Sequence[str]) -> str:
        cmd = [self.exe, "--loadEngine=" + str(self.bundle / ENGINE), *self.dla, *args]
        p = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
        text = p.stdout.decode(errors="replace")
        if p.returncode != 0:
            last = [line for line in text.splitlines() if "[E]" in line] or text.splitlines() or ["no output"]
            raise Fail("running trtexec", last[-1].strip(), "run the same trtexec line on the device to see its log")
        return text

    def with_inputs(self, feeds: Dict[str, Tuple[str, Tuple[int, ...], bytes]], tmp: Path) -> List[str]:
        """--shapes and --loadInputs for raw feeds: trtexec reads each input from a raw file."""
        shapes, loads = [], []
        for name, (dtype, shape, raw) in feeds.items():
            narrow = dtype == "int64" and int(self.version.split(".")[0]) < 10  # TensorRT 8 binds int64 as int32
            (tmp / (name + ".bin")).write_bytes(int32_bytes(raw) if narrow else raw)
            shapes.append("{}:{}".format(name, "x".join(map(str, shape))))
            loads.append("{}:{}".format(name, tmp / (name + ".bin")))
        return ["--shapes=" + ",".join(shapes), "--loadInputs=" + ",".join(loads)]

    def time(self, feeds: Dict[str, Any], warmup_ms: int, runs: Optional[int], duration: float,
             ops: bool) -> Tuple[List[float], Optional[Dict[str, Any]]]:  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="edgekit-trtexec-") as name:
            tmp = Path(name)
            args = [*self.with_inputs(feeds, tmp), "--noDataTransfers", "--warmUp={}".format(warmup_ms),
                    "--exportTimes={}".format(tmp / "times.json")]  # fmt: skip
            args += ["--iterations={}".format(runs), "--duration=0"] if runs else ["--duration={}".format(duration)]
            if ops:
                args += ["--separateProfileRun", "--exportProfile={}".format(tmp / "profile.json")]
            self.call(args)
            ms = trtexec_times(json.loads((tmp / "times.json").read_text()))
            layers = None
            if ops:
                layers = trtexec_layers(json.loads((tmp / "profile.json").read_text()), self.name)
        return ms, layers

    def infer(self, feeds: Dict[str, Raw]) -> Dict[str, Raw]:
        with tempfile.TemporaryDirectory(prefix="edgekit-trtexec-") as name:
            tmp = Path(name)
            self.call([*self.with_inputs(feeds, tmp), "--iterations=1", "--warmUp=0", "--duration=0",
                       "--exportOutput={}".format(tmp / "out.json")])  # fmt: skip
            return trtexec_outputs(json.loads((tmp / "out.json").read_text()))


def int32_bytes(int64_raw: bytes) -> bytes:
    """Little-endian int64 values as int32 (token ids and masks: far inside int32's range)."""
    values = values_of("q", int64_raw)
    if sys.byteorder != "little":
        values.byteswap()
    out = values_of("i", values)
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def trtexec_version(banner: str) -> Optional[str]:
    """'&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # ...' -> '10.3.0'; TensorRT 8 numbers it major * 1000 +
    minor * 100 + patch ('v8502' -> '8.5.2'), TensorRT 10 major * 10000 + minor * 100 + patch."""
    m = re.search(r"\[TensorRT v(\d+)\]", banner)
    if not m:
        return None
    n = int(m.group(1))
    major, minor, patch = (n // 10000, n // 100 % 100, n % 100) if n >= 10000 else (n // 1000, n // 100 % 10, n % 100)
    return "{}.{}.{}".format(major, minor, patch)


def trtexec_outputs(records: Any) -> Dict[str, Tuple[str, Sequence[int], bytes]]:
    """`trtexec --exportOutput`: [{"name", "dimensions": "1x10", "values": [...]}, ...] as float32 arrays."""
    out = {}
    for r in records:
        shape = [int(d) for d in str(r["dimensions"]).split("x") if d]
        values = [float(v) for v in r["values"]]
        out[str(r["name"])] = ("float32", shape, struct.pack("<{}f".format(len(values)), *values))
    return out


def load_runtime(directory: Path, threads: Optional[int]) -> Tuple[Any, Dict[str, Any]]:
    """(the runtime for the artifact's format, its manifest), after checking the files against the manifest."""
    m = manifest(directory)
    fmt, precision, meta = m.get("artifact_format"), m.get("precision"), m.get("meta", {})
    if fmt in ("onnx", "ort-mobile"):
        need("onnxruntime", "pip install onnxruntime numpy (or your distribution's package)")
        return OrtRuntime(directory / m["file"], threads), m
    if fmt == "openvino":
        need("openvino", "pip install openvino numpy")
        return OpenVINORuntime(directory / m["file"], threads, str(precision)), m
    if fmt == "tensorrt":
        if module_version("tensorrt") and module_version("numpy"):
            return TensorRTRuntime(directory, meta), m
        exe = trtexec()
        if exe:
            return TrtexecRuntime(directory, meta, exe), m
        raise Fail("loading the engine", "no TensorRT Python bindings (with numpy) and no trtexec on this device",
                   "install JetPack's TensorRT: sudo apt install nvidia-tensorrt")  # fmt: skip
    raise Fail("loading the artifact", "the agent does not run {} artifacts".format(fmt),
               "install EdgeKit on the device for this format")  # fmt: skip


def need(module: str, fix: str) -> None:
    for name in (module, "numpy"):
        if module_version(name) is None:
            raise Fail("loading the runtime", "{} is not installed on this device".format(name), fix)


# -- commands ---------------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    m = re.search(r"VmHWM:\s+(\d+)", read_text("/proc/self/status") or "")
    if m:
        return int(m.group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    m = re.search(r"VmRSS:\s+(\d+)", read_text("/proc/self/status") or "")
    return int(m.group(1)) / 1024 if m else peak_rss_mb()


def feeds_for(feeds_dir: Path, batch: int) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    path = feeds_dir / "b{}.npz".format(batch)
    if not path.is_file():
        raise Fail("reading inputs", "no inputs for batch {} ({})".format(batch, path.name), "send them again")
    return read_npz(path)


def profile(args: argparse.Namespace) -> Dict[str, Any]:
    directory = Path(args.artifact)
    rss_before = rss_mb()
    start = time.perf_counter()
    runtime, m = load_runtime(directory, args.threads)
    load_s = time.perf_counter() - start
    results, ops, first_ms = [], None, None
    for i, batch in enumerate(args.batch):
        raw = feeds_for(Path(args.feeds), batch)
        with Tegrastats() if args.energy and i == 0 else NoEnergy() as power:
            if isinstance(runtime, TrtexecRuntime):
                ms, layers = runtime.time(raw, 200, args.runs, args.duration, args.ops and i == 0)
                ops = layers if i == 0 else ops
            else:
                feeds = numpy_arrays(raw)
                if first_ms is None:
                    t = time.perf_counter()
                    runtime.run(feeds)
                    first_ms = (time.perf_counter() - t) * 1e3
                ms = time_calls(runtime.bind(feeds), args.warmup, args.runs, args.duration)
        row = {"batch": batch, "latency_ms": latency_stats(ms), "throughput": round(batch * len(ms) / sum(ms) * 1e3, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
        if args.energy and i == 0:
            row["energy"] = power.energy(ms)
        results.append(row)
        if args.ops and i == 0 and not isinstance(runtime, TrtexecRuntime):
            ops = runtime.ops(feeds, 20)
    return {
        "artifact": {"path": str(directory), "format": m.get("artifact_format"), "precision": m.get("precision"),
                     "sha256": m["files"][m["file"]],
                     "size_mb": round((directory / m["file"]).stat().st_size / 1e6, 3)},
        "runtime": runtime.name,
        "settings": {"batches": args.batch, "warmup": args.warmup, "runs": args.runs,
                     "duration_s": None if args.runs else args.duration, "threads": args.threads, "dims": {}},
        "load_s": round(load_s, 4),
        "first_inference_ms": round(first_ms or 0.0, 4),
        "rss_before_load_mb": round(rss_before, 1),
        "results": results,
        "ops": ops,
        "host": host_info(),
        "device_side": "agent",
    }  # fmt: skip


def host_info() -> Dict[str, Any]:
    """The shape of `edgekit profile`'s host, with the device's facts (runtimes, power mode, clocks) beside it."""
    device = facts()
    return {"hostname": platform.node(), "cpu": device["cpu_model"], "arch": platform.machine(), "isa": device["isa"],
            "cores": os.cpu_count(), "usable_cores": device["cpus"], "os": platform.platform(),
            "identity": {k: device[k] for k in IDENTITY}, "device": device,
            "versions": {k: v for k, v in device["runtimes"].items() if v}}  # fmt: skip


class NoEnergy:
    def __enter__(self) -> "NoEnergy":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def infer(args: argparse.Namespace) -> Dict[str, Any]:
    """Every chunk of `--chunks` (N.npz, the host's feeds) run in order; `--out`/N.npz holds its outputs."""
    runtime, _ = load_runtime(Path(args.artifact), args.threads)
    chunks, out = sorted(Path(args.chunks).glob("*.npz")), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for chunk in chunks:
        raw = read_npz(chunk)
        outputs = runtime.infer(raw) if isinstance(runtime, TrtexecRuntime) else as_raw(runtime.run(numpy_arrays(raw)))
        write_npz(out / chunk.name, outputs)  # type: ignore[arg-type]
    return {"chunks": len(chunks), "runtime": runtime.name, "device_side": "agent"}


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """The bundle's engine: its build_engine.py with this Python's TensorRT, else build_engine.sh with trtexec."""
    bundle = Path(args.bundle)
    manifest(bundle)
    extra = ["--dla-core", str(args.dla_core)] if args.dla_core is not None else []
    if module_version("tensorrt"):
        cmd = [sys.executable, str(bundle / "build_engine.py"), *extra]
        how = "build_engine.py (TensorRT {})".format(module_version("tensorrt"))
    elif trtexec():
        cmd = ["bash", str(bundle / "build_engine.sh"), *(["--useDLACore={}".format(args.dla_core),
                                                            "--allowGPUFallback"] if extra else [])]  # fmt: skip
        how = "build_engine.sh (trtexec)"
    else:
        raise Fail("building the engine", "no TensorRT Python bindings and no trtexec on this device",
                   "install JetPack's TensorRT: sudo apt install nvidia-tensorrt")  # fmt: skip
    env = {**os.environ, "TRTEXEC": trtexec() or ""}
    p = subprocess.run(cmd, check=False, cwd=str(bundle), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    text = p.stdout.decode(errors="replace").strip().splitlines()
    if p.returncode != 0:
        raise Fail("building the engine", text[-1] if text else "exit {}".format(p.returncode),
                   "run `{}` on the device to see the whole log".format(" ".join(cmd[:2])))  # fmt: skip
    if not (bundle / "engine.json").is_file():  # trtexec writes no build record: the agent does
        version = tensorrt_version() or "?"
        write_atomic(bundle / "engine.json", json.dumps({"tensorrt": version, "dla_core": args.dla_core,
                                                         "built_by": "trtexec"}).encode())  # fmt: skip
    return {"engine": str(bundle / ENGINE), "how": how, "device_side": "agent",
            "record": json.loads((bundle / "engine.json").read_text())}  # fmt: skip


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, "edgekit-agent: error: {}\n".format(message))


def ints(text: str) -> List[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("'{}' is not a comma list of integers".format(text)) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog=AGENT, description="EdgeKit's device side: facts, build, profile, infer.")
    sub = p.add_subparsers(dest="command")
    sub.required = True
    sub.add_parser("facts", help="the device's identity, runtimes and power mode")
    b = sub.add_parser("build", help="build a TensorRT bundle's engine")
    b.add_argument("bundle")
    b.add_argument("--dla-core", type=int)
    pr = sub.add_parser("profile", help="time an artifact")
    pr.add_argument("artifact")
    pr.add_argument("--feeds", required=True, help="a directory of b<batch>.npz inputs")
    pr.add_argument("--batch", type=ints, default=[1])
    pr.add_argument("--warmup", type=int, default=10)
    pr.add_argument("--runs", type=int)
    pr.add_argument("--duration", type=float, default=2.0)
    pr.add_argument("--threads", type=int)
    pr.add_argument("--no-ops", dest="ops", action="store_false")
    pr.add_argument("--no-energy", dest="energy", action="store_false")
    inf = sub.add_parser("infer", help="run chunks of inputs, write their outputs")
    inf.add_argument("artifact")
    inf.add_argument("--chunks", required=True)
    inf.add_argument("--out", required=True)
    inf.add_argument("--threads", type=int)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    commands = {"facts": lambda a: facts(), "build": build, "profile": profile, "infer": infer}
    try:
        result = commands[args.command](args)
    except Fail as e:
        print("edgekit-agent: error: {}".format(e), file=sys.stderr)
        return 1
    except Exception as e:  # a runtime's own exception: still one line, naming the command
        print("edgekit-agent: error: {}: {}: {}".format(args.command, type(e).__name__, str(e).strip().splitlines()[0]
                                                         if str(e).strip() else ""), file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
