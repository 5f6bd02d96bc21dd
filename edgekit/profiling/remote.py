"""Profiling and engine builds on a device over ssh: copy the artifact into a temporary directory there,
run EdgeKit on the device, bring the JSON (and any built file) back, and remove the temporary files.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeKitError, UsageError
from ..fsutil import atomic_path, write_json
from ..runtimes.tensorrt import ENGINE
from ..targets.tensorrt import record_engine
from .local import Settings

MISSING = 97  # exit status of the probe when EdgeKit is not installed on the device
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
            raise EdgeKitError(f"EdgeKit is not installed on {self.name} ('{self.edgekit}' not found)",
                               "pip install edgekit on the device, or point --remote-edgekit at it")  # fmt: skip
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


@contextmanager
def remote_workdir(remote: Remote) -> Iterator[str]:
    """A temporary directory on the device (after checking EdgeKit is there), removed afterwards."""
    exe = shell_word(remote.edgekit)
    probe = f"command -v {exe} >/dev/null 2>&1 || exit {MISSING}; mktemp -d /tmp/edgekit-remote.XXXXXXXX"
    tmp = remote.run(probe, "preparing a temporary directory", timeout=remote.connect_timeout + 30).decode().strip()
    if not WORKDIR.fullmatch(tmp):  # it is removed with rm -rf afterwards: never anything but mktemp's directory
        raise EdgeKitError(f"mktemp on {remote.name} printed {tmp[:60]!r}, not a temporary directory",
                           "make the device's shell print nothing for a non-interactive ssh command")  # fmt: skip
    try:
        yield tmp
    finally:
        try:
            remote.run(f"rm -rf {shlex.quote(tmp)}", "removing the temporary directory", timeout=60)
        except EdgeKitError:
            pass  # the result (or the first error) matters more; /tmp on the device is cleaned on reboot


def push(remote: Remote, local: Path, tmp: str) -> str:
    """Copy a directory into `tmp` on the device (a tar stream over ssh); its path there."""
    local = local.resolve()  # '.' and '..' have no name of their own to copy under
    remote.run(UNTAR.format(dir=shlex.quote(tmp)), f"copying {local.name}", stdin=tar_bytes(local))
    return f"{tmp}/{local.name}"


def edgekit_command(remote: Remote, args: Sequence[str]) -> str:
    """The device's shell command that runs EdgeKit with `args`, under `env` with the remote's variables."""
    env = ["env", *(shlex.quote(f"{k}={v}") for k, v in remote.env)] if remote.env else []
    return " ".join([*env, shell_word(remote.edgekit), *(shlex.quote(a) for a in args)])


def edgekit_json(remote: Remote, args: Sequence[str], step: str) -> dict[str, Any]:
    out = remote.run(edgekit_command(remote, [*args, "--json"]), step)
    try:
        return json.loads(out.decode())
    except json.JSONDecodeError as e:
        raise EdgeKitError(f"{step} on {remote.name} printed no JSON result", "run it there by hand to see why") from e


def profile_remote(artifact: Path, remote: Remote, settings: Settings) -> dict[str, Any]:
    if not artifact.is_dir():
        raise UsageError(f"{artifact} is not an artifact directory", "pass a directory `edgekit export` wrote")
    args = ["profile", "--batch", ",".join(map(str, settings.batches)), "--warmup", str(settings.warmup)]
    args += ["--runs", str(settings.runs)] if settings.runs else ["--duration", str(settings.duration)]
    args += ["--threads", str(settings.threads)] if settings.threads else []
    args += [f"--shape={k}={v}" for k, v in (settings.dims or {}).items()]
    args += [] if settings.ops else ["--no-ops"]
    with remote_workdir(remote) as tmp:
        there = push(remote, artifact, tmp)
        result = edgekit_json(remote, [*args[:1], there, *args[1:]], "edgekit profile")
    result["artifact"]["path"] = str(artifact)
    result["remote"] = {"device": remote.name, "path": there}
    return result


def build_remote(bundle: Path, remote: Remote, dla_core: int | None = None) -> dict[str, Any]:
    """Build a TensorRT engine from a bundle on the device, and bring the engine back into the bundle."""
    if not bundle.is_dir():
        raise UsageError(f"{bundle} is not a bundle directory", "pass the tensorrt directory `edgekit export` wrote")
    with remote_workdir(remote) as tmp:
        there = push(remote, bundle, tmp)
        args = ["build", there, *(["--dla-core", str(dla_core)] if dla_core is not None else [])]
        edgekit_json(remote, args, "edgekit build")
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
    return {"bundle": str(bundle), "engine": str(engine), "remote": {"device": remote.name, "path": there}}
