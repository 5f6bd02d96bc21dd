"""Profiling, engine builds and validation inputs on a device over ssh: copy the artifact into a temporary directory
there, run EdgeKit on the device where it is installed, else EdgeKit's device agent (edgekit/agent.py: one file, the
device's own Python 3.8+, numpy and runtime, or trtexec), bring the JSON (and any built file or outputs) back, and
remove the temporary files.

It runs the system's OpenSSH client with the user's own keys, agent and config, in batch mode: it never
asks for, takes or stores a password. Every step has a timeout, and each failure is one line that says
which step failed and why."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import agent
from ..artifact import load_artifact
from ..errors import EdgeKitError, UsageError
from ..fsutil import atomic_path, write_json
from ..runtimes.tensorrt import ENGINE
from ..targets.tensorrt import record_engine
from .local import Settings, check_dims

MISSING = 97  # exit status of the probe when neither EdgeKit nor Python is on the device
AGENT_SOURCE = Path(agent.__file__).read_bytes()
OUTPUT = re.compile(r"^\d{6}\.npz$")  # the only names fetched back from the device's outputs
# A user or host may not start with '-': ssh would read `-oProxyCommand=...` as an option, not a destination.
SPEC = re.compile(r"^(?:(?P<user>[^@\s:-][^@\s:]*)@)?(?P<host>[^@\s:-][^@\s:]*)(?::(?P<port>\d+))?$")
WORKDIR = re.compile(r"/tmp/edgekit-remote\.[A-Za-z0-9]+")  # what the probe's mktemp template yields
# GNU tar refuses absolute and '..' member names by default (no -P); these two also keep a root login from
# restoring the archive's owners and mode bits. EdgeKit's own archive holds regular files only (tar_bytes).
UNTAR = "tar --no-same-owner --no-same-permissions -C {dir} -xf -"


@dataclass(frozen=True)
class Remote:
    host: str
    user: str | None = None
    port: int | None = None
    config: Path | None = None  # an ssh_config file (ssh -F); None: the user's own
    edgekit: str = "edgekit"  # the EdgeKit command on the device, e.g. a venv's bin/edgekit
    python: str = "python3"  # the device's Python, which runs the agent where EdgeKit is not installed
    env: tuple[tuple[str, str], ...] = ()  # variables EdgeKit runs with there, e.g. (("PYTHONPATH", "/opt/src"),)
    connect_timeout: int = 10
    timeout: float = 600.0  # for the whole remote command

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> Remote:
        m = SPEC.match(spec.strip())
        port = int(m["port"]) if m and m["port"] else None
        if not m or (port is not None and not 0 < port < 65536):
            raise UsageError(f"'{spec}' is not a remote of the form user@host[:port]", "e.g. --remote nvidia@orin:22")
        return cls(m["host"], m["user"], port, **kw)

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def ssh(self, command: str) -> list[str]:
        args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        args += ["-F", str(self.config)] if self.config else []
        args += ["-p", str(self.port)] if self.port else []
        return [*args, "--", f"{self.user}@{self.host}" if self.user else self.host, command]  # '--': no options after

    def run(self, command: str, step: str, stdin: bytes | None = None, timeout: float | None = None) -> bytes:
        """Run `command` on the device; stdout, or a one-line error naming the step."""
        try:
            p = subprocess.run(self.ssh(command), input=stdin, capture_output=True, timeout=timeout or self.timeout,
                               check=False)  # fmt: skip
        except FileNotFoundError as e:
            raise UsageError("the ssh client is not installed", "install OpenSSH (Debian: openssh-client)") from e
        except subprocess.TimeoutExpired as e:
            raise EdgeKitError(f"{step} on {self.name} timed out after {e.timeout:.0f} s",
                               "check the device, or raise --remote-timeout") from e  # fmt: skip
        err = p.stderr.decode(errors="replace").strip().splitlines()
        if p.returncode == 255:  # ssh's own failure: resolve, connect, host key or authentication
            raise EdgeKitError(f"cannot reach {self.name} over ssh: {err[-1] if err else 'ssh failed'}",
                               "check the host, port, your ssh keys and known_hosts (ssh -v)")  # fmt: skip
        if p.returncode == MISSING:
            raise EdgeKitError(f"neither EdgeKit ('{self.edgekit}') nor Python ('{self.python}') is on {self.name}",
                               "point --remote-python at the device's python3 (JetPack ships one)")  # fmt: skip
        if p.returncode != 0:
            raise EdgeKitError(f"{step} on {self.name} failed: {err[-1] if err else f'exit {p.returncode}'}")
        return p.stdout


def shell_word(path: str) -> str:
    """`path` as one word of the device's shell: quoted, except that a leading ~/ still means the login's home
    (quoted, '~' would be a literal directory name)."""
    return '"$HOME"/' + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Only directories and regular files travel, without owner or special mode bits: a symlink or hardlink could
    point the device's copy at files outside it, and a device file or FIFO has no business in an artifact."""
    if not (info.isreg() or info.isdir()):
        raise UsageError(f"{info.name} is a link or special file", "copy only regular files into the artifact")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o755
    return info


def tar_bytes(path: Path) -> bytes:
    """The directory `path` as a tar archive whose members all lie under one top directory, its name."""
    if not path.name:
        raise UsageError(f"{path} cannot be copied to a device", "pass an artifact directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=path.name, filter=_plain_member)
    return buf.getvalue()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def files_tar(files: Mapping[str, bytes]) -> bytes:
    """Regular files at relative paths (EdgeKit's own names: the agent, feeds, chunks) as a tar archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class DeviceSession:
    """A temporary directory on the device holding the agent, and whether EdgeKit is installed there."""

    remote: Remote
    tmp: str
    edgekit: bool

    @property
    def side(self) -> str:
        """What runs the measurement there: 'edgekit' (installed) or 'agent' (edgekit_agent.py)."""
        return "edgekit" if self.edgekit else "agent"

    def send(self, files: Mapping[str, bytes], step: str) -> None:
        self.remote.run(UNTAR.format(dir=shlex.quote(self.tmp)), step, stdin=files_tar(files))

    def push(self, local: Path) -> str:
        """Copy a directory into the session (a tar stream over ssh); its path there."""
        local = local.resolve()  # '.' and '..' have no name of their own to copy under
        self.remote.run(UNTAR.format(dir=shlex.quote(self.tmp)), f"copying {local.name}", stdin=tar_bytes(local))
        return f"{self.tmp}/{local.name}"

    def agent(self, args: Sequence[str], step: str) -> dict[str, Any]:
        cmd = " ".join([shell_word(self.remote.python), shlex.quote(f"{self.tmp}/{agent.AGENT}"),
                        *(shlex.quote(a) for a in args)])  # fmt: skip
        return reply_json(self.remote, self.remote.run(cmd, step), step)

    def fetch(self, directory: str, step: str) -> dict[str, bytes]:
        """The files of `directory` in the session whose names are outputs' (NNNNNN.npz); nothing else is read."""
        data = self.remote.run(f"tar -C {shlex.quote(f'{self.tmp}/{directory}')} -cf - .", step)
        found = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isreg() and OUTPUT.match(name) and (f := tar.extractfile(member)) is not None:
                    found[name] = f.read()
        return found


@contextmanager
def device_session(remote: Remote) -> Iterator[DeviceSession]:
    """A temporary directory on the device with the agent in it, removed afterwards (also after a failure)."""
    exe, py = shell_word(remote.edgekit), shell_word(remote.python)
    probe = (f"if command -v {exe} >/dev/null 2>&1; then echo edgekit; elif command -v {py} >/dev/null 2>&1; "
             f"then echo agent; else exit {MISSING}; fi; mktemp -d /tmp/edgekit-remote.XXXXXXXX")  # fmt: skip
    reply = remote.run(probe, "preparing a temporary directory", timeout=remote.connect_timeout + 30).decode().split()
    side, tmp = reply if len(reply) == 2 else ("", "")
    if side not in ("edgekit", "agent") or not WORKDIR.fullmatch(tmp):  # it is removed with rm -rf: only mktemp's
        raise EdgeKitError(f"mktemp on {remote.name} printed {' '.join(reply)[:60]!r}, not a temporary directory",
                           "make the device's shell print nothing for a non-interactive ssh command")  # fmt: skip
    try:
        session = DeviceSession(remote, tmp, side == "edgekit")
        session.send({agent.AGENT: AGENT_SOURCE}, "copying the agent")
        yield session
    finally:
        try:
            remote.run(f"rm -rf {shlex.quote(tmp)}", "removing the temporary directory", timeout=60)
        except EdgeKitError:
            pass  # the result (or the first error) matters more; /tmp on the device is cleaned on reboot


def edgekit_command(remote: Remote, args: Sequence[str]) -> str:
    """The device's shell command that runs EdgeKit with `args`, under `env` with the remote's variables."""
    env = ["env", *(shlex.quote(f"{k}={v}") for k, v in remote.env)] if remote.env else []
    return " ".join([*env, shell_word(remote.edgekit), *(shlex.quote(a) for a in args)])


def reply_json(remote: Remote, out: bytes, step: str) -> dict[str, Any]:
    try:
        reply = json.loads(out.decode())
    except (ValueError, RecursionError) as e:
        raise EdgeKitError(f"{step} on {remote.name} printed no JSON result", "run it there by hand to see why") from e
    if not isinstance(reply, dict):
        raise EdgeKitError(f"{step} on {remote.name} printed {type(reply).__name__}, not a JSON object")
    return reply


def edgekit_json(remote: Remote, args: Sequence[str], step: str) -> dict[str, Any]:
    return reply_json(remote, remote.run(edgekit_command(remote, [*args, "--json"]), step), step)


def agent_profile_args(session: DeviceSession, there: str, settings: Settings) -> list[str]:
    args = ["profile", there, "--feeds", f"{session.tmp}/feeds", "--batch", ",".join(map(str, settings.batches)),
            "--warmup", str(settings.warmup)]  # fmt: skip
    args += ["--runs", str(settings.runs)] if settings.runs else ["--duration", str(settings.duration)]
    args += ["--threads", str(settings.threads)] if settings.threads else []
    return args + ([] if settings.ops else ["--no-ops"])


def measure(session: DeviceSession, artifact: Path, there: str, settings: Settings) -> dict[str, Any]:
    """`edgekit profile --json` of the copied artifact, by EdgeKit on the device or by the agent (which times the
    feeds made here: the IOSpec's example inputs at each batch size, as `edgekit profile` makes them)."""
    if session.edgekit:
        args = ["profile", there, "--batch", ",".join(map(str, settings.batches)), "--warmup", str(settings.warmup)]
        args += ["--runs", str(settings.runs)] if settings.runs else ["--duration", str(settings.duration)]
        args += ["--threads", str(settings.threads)] if settings.threads else []
        args += [f"--shape={k}={v}" for k, v in (settings.dims or {}).items()]
        result = edgekit_json(session.remote, [*args, *([] if settings.ops else ["--no-ops"])], "edgekit profile")
    else:
        io_spec = load_artifact(artifact, verify=False).io
        dims = dict(settings.dims or {})
        check_dims(io_spec, settings.batches, dims)
        batched = "batch" in io_spec.dims
        inputs = {b: io_spec.example_inputs(b, **dims) if batched else io_spec.example_inputs(**dims)
                  for b in settings.batches}  # fmt: skip
        feeds = {f"feeds/b{b}.npz": npz_bytes(x) for b, x in inputs.items()}
        session.send(feeds, "copying the inputs")
        result = session.agent(agent_profile_args(session, there, settings), "profiling")
    result["artifact"]["path"] = str(artifact)
    result["remote"] = {"device": session.remote.name, "path": there, "device_side": session.side}
    return result


def profile_remote(artifact: Path, remote: Remote, settings: Settings) -> dict[str, Any]:
    if not artifact.is_dir():
        raise UsageError(f"{artifact} is not an artifact directory", "pass a directory `edgekit export` wrote")
    with device_session(remote) as session:
        return measure(session, artifact, session.push(artifact), settings)


def device_outputs(
    session: DeviceSession, there: str, chunks: Sequence[Mapping[str, np.ndarray]], threads: int | None
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Run every chunk of feeds on the device in order (the agent's `infer`); their outputs, and the runtime."""
    session.send({f"chunks/{i:06d}.npz": npz_bytes(c) for i, c in enumerate(chunks)}, "copying the validation inputs")
    args = ["infer", there, "--chunks", f"{session.tmp}/chunks", "--out", f"{session.tmp}/out"]
    info = session.agent([*args, *(["--threads", str(threads)] if threads else [])], "running the validation inputs")
    files = session.fetch("out", "fetching the outputs")
    names = [f"{i:06d}.npz" for i in range(len(chunks))]
    if missing := [n for n in names if n not in files]:
        raise EdgeKitError(f"{session.remote.name} sent back {len(files)} of {len(names)} outputs ({missing[0]} "
                           "missing)", "run the validation again")  # fmt: skip
    outputs = []
    for name in names:
        with np.load(io.BytesIO(files[name]), allow_pickle=False) as z:
            outputs.append({k: z[k] for k in z.files})
    return outputs, str(info.get("runtime", "?"))


def build_in(session: DeviceSession, bundle: Path, dla_core: int | None = None) -> dict[str, Any]:
    """Build a bundle's TensorRT engine in a device session (EdgeKit there, else the agent with the device's TensorRT
    Python bindings or trtexec), and bring the engine back into the bundle."""
    remote = session.remote
    there = session.push(bundle)
    dla = ["--dla-core", str(dla_core)] if dla_core is not None else []
    if session.edgekit:
        edgekit_json(remote, ["build", there, *dla], "edgekit build")
    else:
        session.agent(["build", there, *dla], "building the engine")
    # The file names are ours, not the device's reply: a reply cannot choose which local file is written.
    built = remote.run(f"cat {shlex.quote(f'{there}/{ENGINE}')}", "fetching the engine")
    reply = remote.run(f"cat {shlex.quote(f'{there}/engine.json')}", "fetching the engine's build record")
    try:
        info = json.loads(reply)
    except (ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):  # checked before anything is written into the bundle
        raise EdgeKitError(f"{remote.name} sent back an unreadable engine.json", "rebuild the engine")
    engine = bundle / ENGINE
    with atomic_path(engine) as part:
        part.write_bytes(built)
    write_json(bundle / "engine.json", info)
    record_engine(bundle, info)  # the local manifest now hashes the fetched engine, as after a local build
    return {"bundle": str(bundle), "engine": str(engine), "device_side": session.side,
            "remote": {"device": remote.name, "path": there}}  # fmt: skip


def build_remote(bundle: Path, remote: Remote, dla_core: int | None = None) -> dict[str, Any]:
    """`edgekit build --remote`: the engine built on the device, brought back into the bundle."""
    if not bundle.is_dir():
        raise UsageError(f"{bundle} is not a bundle directory", "pass the tensorrt directory `edgekit export` wrote")
    with device_session(remote) as session:
        return build_in(session, bundle, dla_core)
