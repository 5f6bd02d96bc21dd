"""The bad-input matrix: every case runs the real CLI in a subprocess and asserts the exit code (2 usage or input,
1 failure), one `edgekit: error:` line on stderr naming the offending thing and the fix, no traceback, and nothing
left behind that looks complete (no manifest, report or model file, no temporary file)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.artifact import Artifact, model_hash
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.loading import build_model, save_model_package
from edgekit.models import build_fusion_model
from edgekit.targets.onnx import export_onnx

KWARGS = {"arch": "late", "preset": "small", "vocab_size": 41}
IO = io_spec(AVDigitsConfig(), 41)
# Files whose presence makes a directory look like a finished EdgeKit output.
COMPLETE = {"manifest.json", "report.json", "edgekit-model.yaml", "stage.json", "model.onnx", "model.safetensors"}

DET_MODEL = """
    import torch
    from torch import nn


    class DetFusion(nn.Module):
        # Fuses the modalities through a 2x2 determinant: ONNX Det, which TensorRT 10.3 cannot parse.
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(7, 10)

        def forward(self, image, text_ids, text_mask, audio, modality_mask):
            m = image.flatten(1)[:, :4].reshape(-1, 2, 2)
            feats = [image.flatten(1).mean(1, keepdim=True), (text_ids * text_mask).float().mean(1, keepdim=True),
                     audio.flatten(1).mean(1, keepdim=True), torch.linalg.det(m)[:, None], modality_mask.float()]
            return self.fc(torch.cat(feats, 1))


    def build():
        return DetFusion()


    def boom():
        raise RuntimeError("checkpoint server unavailable")


    def not_a_module():
        return {"weights": 1}
"""

# Hides an installed package from the import system, the way an uninstalled extra looks (find_spec -> None).
HIDE_PACKAGES = """
    import importlib.machinery, os
    _hidden = set(os.environ["EDGEKIT_TEST_HIDE"].split(","))
    _find = importlib.machinery.PathFinder.find_spec.__func__

    def _find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in _hidden else _find(cls, name, path, target)

    importlib.machinery.PathFinder.find_spec = classmethod(_find_spec)
"""


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return p.returncode == 0


@dataclass
class World:
    root: Path
    mounts: list[Path] = field(default_factory=list)

    def __getattr__(self, name: str) -> Path:  # w.pkg, w.art, ...: paths under root
        return self.root / name


def _package(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_fusion_model(**KWARGS)
    return save_model_package(model, IO, path, factory="edgekit.models:build_fusion_model", kwargs=KWARGS)


def _onnx_artifact(pkg: Path, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_fusion_model(**KWARGS).eval()
    out.mkdir(parents=True)
    export_onnx(model, IO, out / "model.onnx")
    Artifact("onnx", "fp32", out, "model.onnx", IO, model_hash(model), {}).write_manifest()
    return out


def _data_dir(src: Path, dst: Path, train: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Path:
    """A copy of AV-digits whose train split (the calibration split) is rewritten by `train`."""
    dst.mkdir()
    for split in ("val", "test"):
        shutil.copyfile(src / f"{split}.npz", dst / f"{split}.npz")
    with np.load(src / "train.npz") as z:
        np.savez(dst / "train.npz", **train({k: z[k] for k in z.files}))
    return dst


def _ptq_recipe(path: Path, model: Path, data: Path | None = None, **extra: object) -> Path:
    recipe = {"model": str(model), "stages": [{"kind": "quantize", "backend": "onnx", "samples": 16}],
              "targets": ["x86-avx512-vnni"], **extra}  # fmt: skip
    if data is not None:
        recipe["data"] = {"name": str(data)}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, avdigits) -> World:
    w = World(tmp_path_factory.mktemp("bad"))
    pkg = _package(w.pkg, 0)
    art = _onnx_artifact(pkg, w.art, 0)
    _onnx_artifact(_package(w.pkg2, 1), w.art2, 1)

    shutil.copytree(pkg, w.truncated)
    weights = w.truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    class Payload:  # unpickling it would run `touch marker`
        def __reduce__(self):
            return os.system, (f"touch {w.root / 'pwned'}",)

    torch.save({"state": Payload()}, w.root / "evil.pt")
    torch.manual_seed(2)
    torch.save(build_fusion_model("late", "small", vocab_size=7).state_dict(), w.root / "other_vocab.pt")

    w.user.mkdir()
    (w.user / "detmodel.py").write_text(textwrap.dedent(DET_MODEL))
    IO.save(w.user / "io.yaml")
    det = save_model_package(build_model("detmodel.py:build", {}, w.user), IO, w.user / "detpkg",
                             factory="detmodel.py:build", kwargs={})  # fmt: skip
    shutil.copyfile(w.user / "detmodel.py", det / "detmodel.py")
    (w.user / "io_badrange.yaml").write_text(
        (w.user / "io.yaml").read_text().replace("opt: 16\n    max: 32", "opt: 16\n    max: 8")
    )

    _data_dir(avdigits, w.nan_data, lambda a: {**a, "image": np.full_like(a["image"], np.nan)})
    _data_dir(avdigits, w.empty_data, lambda a: {k: v[:0] for k, v in a.items()})
    _data_dir(avdigits, w.one_class, lambda a: {k: v[a["label"] == 3] for k, v in a.items()})
    w.f64_data.mkdir()
    with np.load(avdigits / "test.npz") as z:
        np.savez(w.f64_data / "test.npz", **{k: z[k].astype(np.float64) if k == "image" else z[k] for k in z.files})

    w.recipes.mkdir()
    _ptq_recipe(w.recipes / "ptq.yaml", pkg)
    for name, data in (("nan", w.nan_data), ("empty", w.empty_data), ("one_class", w.one_class)):
        _ptq_recipe(w.recipes / f"{name}.yaml", pkg, data)
    (w.recipes / "typo.yaml").write_text("stages:\n  - kind: prune\n    pruning_ration: 0.3\n")
    (w.recipes / "wrong_type.yaml").write_text("seed: many\n")
    (w.recipes / "not_yaml.yaml").write_text("stages: [kind: prune\n")

    profile = yaml.safe_load((Path(__file__).parents[1] / "edgekit/hardware/profiles/x86-avx512-vnni.yaml").read_text())
    w.profiles.mkdir()
    (w.profiles / "no_budgets.yaml").write_text(yaml.safe_dump({k: v for k, v in profile.items() if k != "budgets"}))
    negative = {**profile, "budgets": {**profile["budgets"], "max_accuracy_drop": -1.0}}
    (w.profiles / "negative.yaml").write_text(yaml.safe_dump(negative))

    shutil.copytree(art, w.tampered)
    with open(w.tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    shutil.copytree(art, w.corrupt)
    onnx_file = w.corrupt / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:2000])
    m = json.loads((w.corrupt / "manifest.json").read_text())  # a manifest that matches the damaged file
    m["files"] = {"model.onnx": hashlib.sha256(onnx_file.read_bytes()).hexdigest()}
    (w.corrupt / "manifest.json").write_text(json.dumps(m))

    shutil.copytree(art, w.nested)
    (w.nested / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # past the JSON parser's recursion limit
    (w.root / "huge_int.json").write_text('{"results": [{"latency_ms": {"p50": 1' + "0" * 5000 + "}}]}")
    r = _run(["profile", str(art), "--runs", "3", "--warmup", "1", "--no-ops", "--json"])
    assert r.returncode == 0, r.stderr
    (w.root / "art_profile.json").write_text(r.stdout)

    w.other_run.mkdir()  # another recipe's finished run
    (w.other_run / "recipe.yaml").write_text("model: somewhere-else\n")
    (w.other_run / "report.json").write_text("{}\n")
    w.used_out.mkdir()
    (w.used_out / "notes.txt").write_text("mine\n")

    w.hide.mkdir()
    (w.hide / "sitecustomize.py").write_text(textwrap.dedent(HIDE_PACKAGES))
    for name, options in (("ro", "ro,size=1m"), ("full", "size=96k")):
        if mount_tmpfs(w.root / name, options):
            w.mounts.append(w.root / name)
    yield w
    for mount in w.mounts:
        subprocess.run(["umount", str(mount)], check=False)


def _run(argv: list[str], env: dict[str, str] | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv], capture_output=True, text=True, check=False,
        env={**os.environ, "COLUMNS": "120", **(env or {})}, preexec_fn=limit if fsize else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World], list[str]]
    code: int
    says: tuple[str, ...]  # fragments of the error line: the offending thing and the fix
    env: Callable[[World], dict[str, str]] = lambda w: {}


def _export(model: str, out: str, *extra: str) -> list[str]:
    return ["export", "--model", model, "--target", "x86", "--out", out, "--no-validate", *extra]


def _compress(recipe: str) -> Callable[[World], list[str]]:
    """`edgekit compress` of recipes/RECIPE.yaml into its own run directory."""
    return lambda w: ["compress", "--recipe", str(w.recipes / f"{recipe}.yaml"), "--out", str(w.root / "runs" / recipe)]


ONNX_FP32 = ("--format", "onnx", "--precision", "fp32")

CASES = [
    # model files
    Case("truncated-safetensors", lambda w: ["eval", "--model", str(w.truncated)], 2,
         ("model.safetensors is not a valid safetensors file", "re-save")),
    Case("pickle-that-runs-code", lambda w: ["eval", "--model", str(w.pkg), "--weights", str(w.root / "evil.pt")], 2,
         ("evil.pt holds pickled objects or code", "--trust-checkpoint")),
    Case("factory-raises", lambda w: ["eval", "--model", str(w.user / "detmodel.py:boom"), "--io",
                                      str(w.user / "io.yaml")], 2,
         ("factory", "raised RuntimeError: checkpoint server unavailable", "fix the factory")),
    Case("factory-returns-non-module", lambda w: ["eval", "--model", str(w.user / "detmodel.py:not_a_module"),
                                                  "--io", str(w.user / "io.yaml")], 2,
         ("returned dict, not a torch.nn.Module",)),
    Case("weights-for-another-architecture", lambda w: ["eval", "--model", str(w.pkg), "--weights",
                                                        str(w.root / "other_vocab.pt")], 2,
         ("branches.text.tokens.weight: file [7, 64] vs model [41, 64]",)),
    # the IO spec
    Case("feed-with-wrong-dtype", lambda w: ["eval", "--model", str(w.pkg), "--data", str(w.f64_data)], 2,
         ("input 'image' has dtype float64", "float32")),
    Case("sequence-longer-than-max", lambda w: ["profile", str(w.art), "--shape", "seq=64", "--runs", "1"], 2,
         ("seq", "64", "32")),
    Case("io-spec-range-inverted", lambda w: ["eval", "--model", str(w.user / "detmodel.py:build"), "--io",
                                              str(w.user / "io_badrange.yaml")], 2,
         ("min <= opt <= max", "16/8")),
    # calibration data
    Case("calibration-nan", _compress("nan"), 2,
         ("NaN or Inf in input 'image'", "clean or drop")),
    Case("calibration-zero-samples", _compress("empty"), 2,
         ("train.npz holds zero samples", "at least one sample")),
    Case("calibration-single-class", _compress("one_class"), 2,
         ("only class 3", "cover")),
    # recipe and profile files
    Case("recipe-unknown-key", _compress("typo"), 2,
         ("pruning_ration", "did you mean 'pruning_ratio'")),
    Case("recipe-wrong-type", lambda w: ["recipe", "check", str(w.recipes / "wrong_type.yaml")], 2,
         ("seed", "should be an integer", "'many'")),
    Case("recipe-not-yaml", _compress("not_yaml"), 2,
         ("not_yaml.yaml is not valid YAML", "line")),
    Case("profile-without-budgets", lambda w: ["validate", str(w.art), "--profile",
                                               str(w.profiles / "no_budgets.yaml")], 2,
         ("no_budgets.yaml", "field 'budgets' is missing", "docs/hardware-profiles.md")),
    Case("profile-negative-budget", lambda w: ["validate", str(w.art), "--profile",
                                               str(w.profiles / "negative.yaml")], 2,
         ("budgets.max_accuracy_drop", "greater than or equal to 0")),
    Case("unknown-target", lambda w: ["export", "--model", str(w.pkg), "--target", "jetson-orin-nan", "--out",
                                      str(w.root / "out/t")], 2,
         ("unknown target 'jetson-orin-nan'", "did you mean")),
    # the output directory
    Case("out-on-read-only-path", lambda w: _export(str(w.pkg), str(w.root / "ro/out"), *ONNX_FP32), 2,
         ("is not writable", "choose a writable --out")),
    Case("out-holds-another-run", lambda w: ["compress", "--recipe", str(w.recipes / "ptq.yaml"), "--out",
                                             str(w.other_run)], 2,
         ("holds a different run", "--overwrite")),
    Case("out-not-empty", lambda w: _export(str(w.pkg), str(w.used_out), *ONNX_FP32), 2,
         ("is not empty", "--overwrite")),
    Case("overwrite-a-directory-that-is-no-run", lambda w: ["compress", "--recipe", str(w.recipes / "ptq.yaml"),
                                                            "--out", str(w.used_out), "--overwrite"], 2,
         ("used_out is not empty and holds no EdgeKit run", "choose a new or empty --out")),
    # artifacts
    Case("extra-not-installed", lambda w: _export(str(w.pkg), str(w.root / "out/ov"), "--format", "openvino",
                                                  "--precision", "fp32"), 2,
         ("needs openvino", "pip install 'edgekit[openvino]'"),
         env=lambda w: {"PYTHONPATH": str(w.hide), "EDGEKIT_TEST_HIDE": "openvino"}),
    Case("op-the-target-cannot-run", lambda w: ["export", "--model", str(w.user / "detpkg"), "--target", "jetson",
                                                "--out", str(w.root / "out/trt"), "--no-validate"], 2,
         ("TensorRT 10.3 cannot parse", "Det", "change those ops")),
    Case("manifest-hash-mismatch", lambda w: ["profile", str(w.tampered), "--runs", "1"], 2,
         ("model.onnx", "does not match its manifest", "re-export")),
    Case("corrupt-artifact-file", lambda w: ["profile", str(w.corrupt), "--runs", "1"], 2,
         ("onnxruntime cannot load", "corrupt/model.onnx", "re-export")),
    Case("measurements-of-another-artifact", lambda w: ["validate", str(w.art2), "--profile", "x86",
                                                        "--measurements", str(w.root / "art_profile.json")], 2,
         ("art_profile.json", "another artifact", "sha256")),
    Case("manifest-nested-too-deep", lambda w: ["profile", str(w.nested), "--runs", "1"], 2,
         ("nested/manifest.json is malformed", "RecursionError", "re-export")),
    Case("measurements-with-a-huge-int", lambda w: ["validate", str(w.art), "--profile", "x86", "--measurements",
                                                    str(w.root / "huge_int.json")], 2,
         ("huge_int.json is not the JSON of `edgekit profile --json`", "ValueError")),
    Case("batch-zero", lambda w: ["profile", str(w.art), "--batch", "0"], 2, ("batch sizes [0]", "at least 1")),
    Case("unknown-option", lambda w: ["profile", str(w.art), "--batches", "4"], 2,
         ("No such option: --batches", "edgekit profile --help")),
    # remote profiling
    Case("unreachable-host", lambda w: ["profile", str(w.art), "--remote", "nobody@127.0.0.1:1",
                                        "--remote-timeout", "20"], 1,
         ("cannot reach nobody@127.0.0.1:1", "Connection refused", "ssh -v")),
]  # fmt: skip


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not any(part in ("ro", "full") for part in p.relative_to(root).parts[:1])}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(world, case):
    if case.id == "out-on-read-only-path" and world.root / "ro" not in world.mounts:
        if os.geteuid() == 0:
            pytest.skip("no read-only mount here, and root writes through file modes")
        (world.root / "ro").chmod(0o555)
    before = _snapshot(world.root)
    r = _run(case.argv(world), case.env(world))
    assert r.returncode == case.code, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr[-2000:]
    for fragment in case.says:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in r.stderr
    after = _snapshot(world.root)
    assert before <= after, sorted(before - after)  # nothing of the user's was deleted
    new = after - before
    assert not [p for p in new if p.name in COMPLETE or p.name.endswith(".tmp")], sorted(new)
    assert not (world.root / "pwned").exists()  # the pickle's payload never ran


def test_a_full_disk_leaves_no_half_file(world):
    """The disk fills while the ONNX file is written: one line naming the file, exit 1, nothing left behind."""
    full = world.root / "full"
    fsize = None if full in world.mounts else 96 * 1024  # no tmpfs: a file-size limit fails the write the same way
    r = _run(_export(str(world.pkg), str(full / "out"), *ONNX_FP32), fsize=fsize)
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert ("No space left on device" in errors[0] or "File too large" in errors[0]) and "free space" in errors[0]
    assert [p for p in full.rglob("*") if p.is_file()] == []


def test_debug_shows_the_traceback(world):
    r = _run(["profile", str(world.tampered), "--runs", "1", "--debug"])
    assert r.returncode == 2 and "Traceback" in r.stderr
