"""Real OpenSSH servers on 127.0.0.1 for the `ssh` tests: each with its own port, host key, user key and client
config, so that several can run at once (a fleet of two "devices")."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    remote: str  # user@127.0.0.1:port
    config: str  # the client's ssh_config: this server's user key and known host key
    server: subprocess.Popen

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(10)


@contextmanager
def sshd_server(tmp: Path, user: str | None = None) -> Iterator[Sshd]:
    """A real sshd on a free port with a temporary host key, user key and client config in `tmp`; stopped after.
    `user`: log in as that account (a "device" account) instead of this process's."""
    if not Path(SSHD).is_file():
        if os.environ.get("CI"):
            pytest.fail("sshd is missing: `make setup` installs openssh-server (scripts/system-deps.sh)")
        pytest.skip("sshd is not installed (Debian: openssh-server)")
    tmp.mkdir(parents=True, exist_ok=True)
    port, user = free_port(), user or getpass.getuser()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    # sshd reads the key file as the user logging in: another account needs a directory it can read
    keys = Path(tempfile.mkdtemp(prefix="edgekit-sshd-keys-")) if user != getpass.getuser() else tmp
    keys.chmod(0o755)
    shutil.copy(tmp / "user_key.pub", keys / "authorized_keys")
    (keys / "authorized_keys").chmod(0o644)
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {keys}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    host_pub = (tmp / "host_key.pub").read_text().split()
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (tmp / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {tmp}/user_key\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {tmp}/known_hosts\n  StrictHostKeyChecking yes\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # the privilege-separation directory sshd expects
    with open(tmp / "sshd.log", "wb") as log:  # a file, not a pipe no one reads: its logging never blocks sshd
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert server.poll() is None and time.monotonic() < deadline, (tmp / "sshd.log").read_text()
        time.sleep(0.05)
    found = Sshd(f"{user}@127.0.0.1:{port}", str(tmp / "ssh_config"), server)
    try:
        yield found
    finally:
        found.stop()
        if keys != tmp:
            shutil.rmtree(keys, ignore_errors=True)


DEVICE_USER = "edgekit-device"


def device_account() -> str:
    """A login on this host with nothing of EdgeKit's: the "device" account (created once; needs root)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        if os.environ.get("CI"):
            pytest.fail("the device account needs root and useradd (CI runs as root)")
        pytest.skip("creating the device account needs root and useradd")
    if subprocess.run(["id", DEVICE_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", DEVICE_USER], check=True)
        subprocess.run(["usermod", "-p", "*", DEVICE_USER], check=True)  # no password, but not locked: keys work
    return DEVICE_USER


SYSTEM_PYTHON = Path("/usr/bin/python3")  # the device account cannot read this user's interpreter (e.g. under /root)


def device_python(directory: Path, packages: tuple[str, ...] = ("numpy", "onnxruntime")) -> Path:
    """A Python for the device account with `packages` only (linked from this environment, so the system's Python
    must be this one's version), not EdgeKit: a venv without pip in a directory that account can read."""
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    if version != str(sys.version_info[:2]):
        pytest.skip(f"{SYSTEM_PYTHON} is {version or 'missing'}, not this Python's {sys.version_info[:2]}")
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(directory)], check=True)
    site = next(directory.glob("lib/python3*/site-packages"))
    here = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for name in [p for pkg in packages for p in (pkg, f"{pkg}.libs")]:
        if (here / name).exists():
            (site / name).symlink_to(here / name)
    for d in (directory, *directory.parents):
        if d == Path("/tmp"):
            break
        d.chmod(0o755)
    return directory / "bin" / "python"
