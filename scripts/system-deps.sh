#!/usr/bin/env bash
# Debian packages the AV-digits benchmark needs: the espeak-ng and flite speech synthesisers.
set -euo pipefail
missing=()
for prog in espeak-ng flite; do command -v "$prog" >/dev/null || missing+=("$prog"); done
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
