"""The trust model of docs/security.md: what EdgeKit reads as data never runs code and never writes outside its
place. A static audit of every load call, then each untrusted input with a payload that would leave a marker
file if it ran, and the ssh path against a real OpenSSH server (the `sshd` fixture of test_profile.py)."""

import ast
import io
import itertools
import json
import os
import pwd
import shlex
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit.artifact import MANIFEST, Artifact, load_artifact
from edgekit.data import load_npz_split
from edgekit.errors import EdgeKitError, UsageError
from edgekit.io import IOSpec
from edgekit.loading import read_manifest
from edgekit.profiling.remote import UNTAR, Remote, build_remote, device_session, shell_word, tar_bytes
from edgekit.recipe import load_recipe, recipe_from_flags
from edgekit.report import render as render_report
from edgekit.validate import recorded_source

from . import test_profile
from .conftest import ROOT
from .test_profile import remote_cli

IO = {
    "dims": {"batch": {"min": 1, "opt": 1, "max": 4}},
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
}
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where an ssh login's relative paths land
sshd = test_profile.sshd  # the real OpenSSH server on 127.0.0.1, shared with test_profile.py


class Payload:
    """Unpickling it would run `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text, repr(text)
    return text


# -- a static audit of every load path in edgekit/ and scripts/ -----------------------------------------------------

SOURCES = sorted([*(ROOT / "edgekit").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])
# Calls that run code from data, or extract archives (an extraction must use filter="data" and be added to
# docs/security.md together with a test).
BANNED = {"pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load", "dill.loads", "joblib.load",
          "yaml.unsafe_load", "yaml.full_load", "os.system", "os.popen", "eval", "exec", "extractall", "extract",
          "shutil.unpack_archive"}  # fmt: skip


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def keyword(call: ast.Call, name: str) -> object:
    """A keyword argument's constant value, "absent", or "not a constant"."""
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "not a constant"
    return "absent"


def calls() -> Iterator[tuple[str, ast.Call, list[ast.AST]]]:
    """(file:line, call, the nodes enclosing it from the innermost out) for every call in the audited sources."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                chain = [node]
                while chain[-1] in parent:
                    chain.append(parent[chain[-1]])
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node, chain


def under_trust_flag(chain: list[ast.AST]) -> bool:
    """Whether the call at chain[0] runs only in the body of an `if trust_checkpoint:`."""
    return any(
        isinstance(node, ast.If) and dotted(node.test) == "trust_checkpoint" and inner in node.body
        for inner, node in itertools.pairwise(chain)
    )


def sets_trust(call: ast.Call) -> bool:
    """Whether code, not the --trust-checkpoint flag, turns unpickling on: a literal True passed for it."""
    literal = [k.value for k in call.keywords if k.arg == "trust_checkpoint"]
    if dotted(call.func).endswith(("load_model", "load_state_dict", "evaluate_model")):
        literal += call.args[1:]  # positional: (path, trust) or (model, weights, io, trust)
    return any(isinstance(v, ast.Constant) and v.value is True for v in literal)


def test_static_audit_of_every_load_call():
    problems, opt_ins = [], []
    for where, call, chain in calls():
        name = dotted(call.func)
        if name in BANNED or name.rsplit(".", 1)[-1] in {"extractall", "unpack_archive"}:
            problems.append(f"{where}: {name}")
        elif name == "torch.load" and keyword(call, "weights_only") is not True:
            (opt_ins if under_trust_flag(chain) else problems).append(f"{where}: torch.load, weights_only not True")
        elif name == "yaml.load" and dotted(next((k.value for k in call.keywords if k.arg == "Loader"), call)) != (
            "_SafeLoader"
        ):
            problems.append(f"{where}: yaml.load without the SafeLoader")
        elif name in ("np.load", "numpy.load") and keyword(call, "allow_pickle") is not False:
            problems.append(f"{where}: np.load without allow_pickle=False")
        elif name.startswith("subprocess.") and keyword(call, "shell") not in ("absent", False):
            problems.append(f"{where}: subprocess with shell=True")
        elif sets_trust(call):
            problems.append(f"{where}: trust_checkpoint set by code, not by the --trust-checkpoint flag")
    assert not problems, problems
    assert [w.split(":")[0] for w in opt_ins] == ["edgekit/loading.py"]  # the one opt-in: --trust-checkpoint
    for path in SOURCES:
        text = path.read_text()
        assert "FullLoader" not in text and "UnsafeLoader" not in text and "allow_pickle=True" not in text, path


def test_trust_checkpoint_is_only_a_flag_of_eval():
    users = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "edgekit").rglob("*.py") if "trust_checkpoint" in p.read_text()
    )
    assert users == ["edgekit/api/verbs.py", "edgekit/cli/evaluate.py", "edgekit/loading.py"]


# -- artifacts, model packages, recipes, datasets -------------------------------------------------------------------


def artifact(directory: Path, **meta: object) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"onnx bytes")
    Artifact("onnx", "fp32", directory, "model.onnx", IOSpec.from_dict(IO), "parent", meta).write_manifest()
    return directory


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("file", "../outside.onnx", "outside the artifact: '../outside.onnx'"),
        ("file", "/etc/passwd", "outside the artifact: '/etc/passwd'"),
        ("files", {"../../x": "0" * 64}, "outside the artifact: '../../x'"),
        ("files", {}, "records no hash for its model file model.onnx"),
    ],
)
def test_a_manifest_cannot_point_a_runtime_outside_its_artifact(tmp_path, field, value, message):
    art = artifact(tmp_path / "art")
    (tmp_path / "outside.onnx").write_bytes(b"unverified")
    m = json.loads((art / MANIFEST).read_text())
    m[field] = value
    (art / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(UsageError) as e:
        load_artifact(art)
    assert message in one_line(e)


def test_package_manifest_is_safe_yaml(tmp_path):
    marker = tmp_path / "pwned"
    for text in (f"factory: !!python/object/apply:os.system ['touch {marker}']\nio: {{}}\n", "factory: !!int x\n"):
        (tmp_path / "edgekit-model.yaml").write_text(text)
        with pytest.raises(UsageError) as e:
            read_manifest(tmp_path)
        assert "edgekit-model.yaml is malformed" in one_line(e)
    assert not marker.exists()


def test_validate_runs_no_factory_that_a_manifest_names(tmp_path):
    """An artifact's manifest is data: its recorded source is the default baseline only if EdgeKit's own factory
    builds it, as loading any other package would run that package's code."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef build(): pass\n")
    (evil / "edgekit-model.yaml").write_text(yaml.safe_dump({"factory": "evil.py:build", "io": IO}))
    logged: list[str] = []
    assert recorded_source([artifact(tmp_path / "a", source=str(evil))], logged.append) is None
    assert not marker.exists() and "pass --baseline" in logged[0]
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "edgekit-model.yaml").write_text(yaml.safe_dump({"factory": "edgekit.models:build_fusion_model", "io": IO}))
    assert recorded_source([artifact(tmp_path / "b", source=str(zoo))]) == zoo


def test_a_recipe_file_cannot_name_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "os:system", "train": f"touch {marker}"}}))
    with pytest.raises(UsageError) as e:
        load_recipe(path)
    assert "field 'data.name' 'os:system' names code" in one_line(e) and not marker.exists()
    assert recipe_from_flags(data="my_pkg.data:load").data.name == "my_pkg.data:load"  # the user's own flag may


def test_dataset_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "test.npz", x=np.array([Payload(marker)], dtype=object), label=np.array([0]))
    with pytest.raises(UsageError) as e:
        load_npz_split(tmp_path, "test")
    assert "is not an .npz of plain arrays" in one_line(e) and not marker.exists()


def test_report_html_escapes_every_value_of_report_json(tmp_path):
    """Every recorded string reaches report.html escaped (Jinja2 autoescape): a model path, a stage name, an error
    and a recipe field holding markup show as text, and the page holds no element they could inject."""
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    row = {"artifact": f"/runs/{evil}/onnx-int8", "format": "onnx", "precision": "int8", "status": "error",
           "error": evil, "unchecked": [evil]}  # fmt: skip
    unverified = {"artifact": evil, "status": "unverified", "accuracy_ci": [0.8, 0.9], "drop_ci": [0.1, 0.2],
                  "checks": [{"budget": evil, "limit": 1.0, "value": None, "status": "unverified", "ok": None,
                              "why": evil, "note": evil}],
                  "subsets": {evil: {"accuracy": 0.5, "drop": 1.0, "drop_ci": [0.0, 2.0]}}}  # fmt: skip
    report = {
        "recipe": {"model": evil}, "model": evil, "task": "classification", "metric": "accuracy", "unit": "points",
        "higher_is_better": True, "verdict": {"status": "fail", "accuracy_drop": None, "note": evil},
        "baseline": {"accuracy": 0.9, "params": 10, "macs": None},
        "stages": [{"name": evil, "params": 5, "macs": None, "accuracy": 0.8, "accuracy_drop": 10.0, "seconds": 1,
                    "path": f"/runs/{evil}"}],
        "artifacts": [{"format": evil, "precision": "int8", "size_mb": 1.0, "accuracy": 0.8, "sha256": evil,
                       "path": f"/runs/{evil}/model.onnx"}],
        "validation": [{"profile": evil, "verdict": "fail", "budgets": {"max_size_mb": evil}, "rows": [row, unverified],
                        "host": {"cpu": evil}, "not_the_device": evil, "resolution": evil, "baseline": None,
                        "gate": {"metric": "accuracy", "unit": "points"}, "split": evil, "gated": True,
                        "the_device": False}],
        "reference": {"model": evil, "search": {"split": evil, "accuracy": 0.9},
                      "verdict": {"split": evil, "accuracy": 0.9}},
        "versions": {"torch": evil}, "provenance": {"host": {"cpu": evil}},
    }  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    page = render_report(tmp_path).read_text()
    assert "<script" not in page and "<img" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;script&gt;alert(") >= 8  # each field is shown, as text


# -- the copy to a device: the archive, the command that extracts it, the shell words --------------------------------


def test_the_archive_for_a_device_holds_only_the_artifacts_regular_files(tmp_path):
    art = artifact(tmp_path / "art")
    (art / "sub").mkdir()
    (art / "sub" / "tool").write_text("x")
    (art / "sub" / "tool").chmod(0o4777)  # setuid, world-writable: neither travels
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(art))) as tar:
        members = tar.getmembers()
    assert {m.name for m in members} == {"art", "art/model.onnx", "art/manifest.json", "art/sub", "art/sub/tool"}
    assert all((m.isreg() or m.isdir()) and m.uid == 0 and m.uname == "" and not m.mode & 0o7022 for m in members)
    for make in (lambda p: p.symlink_to("/etc/passwd"), lambda p: os.link(art / "model.onnx", p), os.mkfifo):
        odd = art / "odd"
        make(odd)
        with pytest.raises(UsageError) as e:
            tar_bytes(art)
        assert "art/odd is a link or special file" in one_line(e)
        odd.unlink()


def hostile_tar(outside: Path, tag: str) -> bytes:
    """Members that would land outside the extraction directory: '../', an absolute path, through a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, target in [(f"../{tag}-dotdot", tarfile.REGTYPE, ""),
                                   (f"{outside}/{tag}-absolute", tarfile.REGTYPE, ""),
                                   (f"{tag}-link", tarfile.SYMTYPE, str(outside)),
                                   (f"{tag}-link/{tag}-through", tarfile.REGTYPE, "")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def test_the_device_side_extraction_keeps_hostile_members_inside(tmp_path):
    """The command a device runs (GNU tar) on an archive that EdgeKit would never build: nothing escapes."""
    target, outside = tmp_path / "in" / "target", tmp_path / "outside"
    target.mkdir(parents=True)
    outside.mkdir()
    p = subprocess.run(["sh", "-c", UNTAR.format(dir=shlex.quote(str(target)))], input=hostile_tar(outside, "t"),
                       capture_output=True, check=False)  # fmt: skip
    assert p.returncode != 0 and b"Member name contains '..'" in p.stderr
    assert not list(outside.iterdir()) and not (tmp_path / "in" / "t-dotdot").exists()


def test_shell_words_keep_the_home_directory_and_nothing_else(tmp_path):
    for word, expected in [("~/v env/bin/edgekit;$(touch m1)", f"{tmp_path}/v env/bin/edgekit;$(touch m1)"),
                           ("it's `touch m2` & $HOME", "it's `touch m2` & $HOME"), ("~user/x", "~user/x")]:  # fmt: skip
        p = subprocess.run(["sh", "-c", f"printf %s {shell_word(word)}"], cwd=tmp_path, env={"HOME": str(tmp_path)},
                           capture_output=True, text=True, check=True)  # fmt: skip
        assert p.stdout == expected
    assert not list(tmp_path.iterdir())


def test_a_remote_cannot_be_an_ssh_option():
    for spec in ("-oProxyCommand=touch@x", "me@-oProxyCommand=x", "-p22"):
        with pytest.raises(UsageError) as e:
            Remote.parse(spec)
        assert "user@host[:port]" in one_line(e)
    args = Remote("-oProxyCommand=x").ssh("true")  # built directly, not parsed: '--' still ends ssh's options
    assert args[-3:] == ["--", "-oProxyCommand=x", "true"]


# -- over ssh, against a real OpenSSH server on 127.0.0.1 -----------------------------------------------------------


@pytest.fixture
def markers(tmp_path) -> Iterator[list[Path]]:
    """Names an injected `touch` would create in the ssh login's home; removed again whatever happens."""
    found = [HOME / f"edgekit-injected-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    yield found
    for m in found:
        m.unlink(missing_ok=True)


@pytest.mark.ssh
def test_remote_arguments_with_shell_syntax_arrive_literally(sshd, tmp_path, markers):
    name = f"a b;touch {markers[0].name};$(touch {markers[1].name})"
    (tmp_path / name).mkdir()
    (tmp_path / name / "model.onnx").write_text("no manifest")
    r = remote_cli(sshd, "profile", str(tmp_path / name), "--runs", "1", "--shape", f"n$(touch {markers[2].name})=1")
    assert r.code == 1 and f"{name} is neither an artifact" in r.stderr, r.stderr  # the device got the name intact
    r = remote_cli(sshd, "profile", str(tmp_path / name), edgekit=f"{EDGEKIT}; touch {markers[0].name}",
                   python=f"python3; touch {markers[1].name}")  # fmt: skip
    assert r.code == 1 and "nor Python ('python3; touch" in r.stderr, r.stderr
    assert not any(m.exists() for m in markers)


@pytest.mark.ssh
def test_remote_extraction_of_a_hostile_archive_fails_in_one_line_inside_its_directory(sshd, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tag = f"edgekit-escape-{uuid.uuid4().hex[:8]}"
    device = Remote.parse(sshd.remote, config=Path(sshd.config), edgekit=EDGEKIT)
    with device_session(device) as session:
        tmp = session.tmp
        with pytest.raises(EdgeKitError) as e:
            device.run(UNTAR.format(dir=shlex.quote(tmp)), "copying x", stdin=hostile_tar(outside, tag))
        assert f"copying x on {device.name} failed" in one_line(e)
    assert not Path(tmp).exists() and not list(outside.iterdir()) and not Path(f"/tmp/{tag}-dotdot").exists()


@pytest.mark.ssh
def test_a_devices_reply_cannot_choose_which_local_file_the_engine_overwrites(sshd, tmp_path):
    """A stand-in for `edgekit build` on the device writes model.engine and its build record, and names another
    file in its reply. The engine lands in the bundle, and the local manifest records its hash and the record."""
    fake = tmp_path / "fake-edgekit"
    fake.write_text('#!/bin/sh\nprintf engine > "$2/model.engine"\nprintf \'{"tensorrt": "10.3"}\' > "$2/engine.json"\n'
                    'echo \'{"engine": "../../manifest.json"}\'\n')  # fmt: skip
    fake.chmod(0o755)
    bundle = artifact(tmp_path / "bundle")
    device = Remote.parse(sshd.remote, config=Path(sshd.config), edgekit=str(fake))
    result = build_remote(bundle, device)
    assert result["engine"] == str(bundle / "model.engine") and (bundle / "model.engine").read_text() == "engine"
    recorded = load_artifact(bundle)  # verifies every hash, the engine's included
    assert recorded.meta["engine"] == {"tensorrt": "10.3"}
    assert "model.engine" in json.loads((bundle / MANIFEST).read_text())["files"]
    assert not (tmp_path / MANIFEST).exists()
