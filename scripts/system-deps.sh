#!/usr/bin/env bash
# Debian packages EdgeKit's demo and tests need: the espeak-ng and flite speech synthesisers (AV-digits),
# OpenSSH's server (the remote-profiling tests start a real sshd on 127.0.0.1), the system's python3 (the Python of
# the tests' "device" account, which cannot read this user's own interpreter), Chromium (the HTML
# report test renders the page headless and takes a screenshot) and QEMU's user-mode emulator (the INT8
# tests run artifacts as an AVX2-only CPU without VNNI, whatever this host's CPU is).
set -euo pipefail
missing=()
need() { [ -x "$1" ] || command -v "$1" >/dev/null || missing+=("$2"); }
need espeak-ng espeak-ng
need flite flite
need /usr/sbin/sshd openssh-server
need /usr/bin/python3 python3  # the "device" account's Python in the device-side tests
need chromium chromium
need qemu-x86_64 qemu-user
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "error: missing ${missing[*]}; install the package(s) with your system's package manager (Debian: apt-get install ${missing[*]})" >&2
    exit 1
fi
