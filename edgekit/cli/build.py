"""edgekit build: build a TensorRT engine from an export bundle, on the device that will run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .common import (
    JsonOpt,
    RemoteEdgekitOpt,
    RemoteOpt,
    RemotePythonOpt,
    RemoteTimeoutOpt,
    SshConfigOpt,
    emit,
    out,
)


def build(
    bundle: Annotated[Path, typer.Argument(help="A tensorrt bundle directory written by `edgekit export`.")],
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (GPU fallback allowed).")] = None,
    remote: RemoteOpt = None,
    ssh_config: SshConfigOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    remote_python: RemotePythonOpt = "python3",
    remote_timeout: RemoteTimeoutOpt = 1800.0,
    as_json: JsonOpt = False,
) -> None:
    """Build a bundle's TensorRT engine on the Jetson, here or with --remote over ssh.

    Needs TensorRT and a GPU where it runs; --remote brings the engine back into the bundle (EdgeKit there, else
    EdgeKit's agent with the device's TensorRT Python bindings or trtexec)."""
    device = None
    if remote:
        device = api.Remote.parse(remote, config=ssh_config, edgekit=remote_edgekit, python=remote_python,
                                  timeout=remote_timeout)  # fmt: skip
    result = api.build_engine(bundle, dla_core, device)
    emit(result, as_json, lambda: out.print(f"engine written to {result['engine']}"))
