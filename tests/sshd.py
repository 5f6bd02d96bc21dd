"""Real OpenSSH servers on 127.0.0.1 for the `ssh` tests: each with its own port, host key, user key and client
config, so that several can run at once (a fleet of two "devices")."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
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
def sshd_server(tmp: Path) -> Iterator[Sshd]:
    """A real sshd on a free port with a temporary host key, user key and client config in `tmp`; stopped after."""
    if not Path(SSHD).is_file():
        if os.environ.get("CI"):
            pytest.fail("sshd is missing: `make setup` installs openssh-server (scripts/system-deps.sh)")
        pytest.skip("sshd is not installed (Debian: openssh-server)")
    tmp.mkdir(parents=True, exist_ok=True)
    port, user = free_port(), getpass.getuser()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    shutil.copy(tmp / "user_key.pub", tmp / "authorized_keys")
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {tmp}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
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
