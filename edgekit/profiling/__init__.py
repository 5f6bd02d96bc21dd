"""Latency profiling on the device: locally (local.py) or over ssh (remote.py), with host facts
(host.py), timing statistics (timing.py) and each runtime's per-operator breakdown (ops.py)."""
