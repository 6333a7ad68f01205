"""Latency/memory measurement of one runner in its own process (``python -m edgevit.harness.worker``).

Isolation gives each artifact a clean peak-RSS reading and keeps runtimes from disturbing each other.
Prints one JSON object: load_seconds, latencies (seconds), peak_rss_mb, threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def proc_status_kib(key: str) -> int | None:
    """A kB field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``), or None where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process image's peak resident memory, MiB.

    ``VmHWM`` belongs to the address space exec created, so it starts fresh in this worker; ``ru_maxrss``
    does not (Linux carries it across fork + exec, so it reported the bench process's own peak).
    """
    hwm = proc_status_kib("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(runner, x: np.ndarray, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        runner(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--artifact", help="artifact folder (manifest.json)")
    p.add_argument("--eager", help="model id, for the eager PyTorch reference")
    p.add_argument("--weights")
    p.add_argument("--labelset")
    p.add_argument("--size", help="HxW for --eager")
    p.add_argument("--input", help=".npy model input to time with (default: standard normal noise)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    # Denormal floats make x86 float math up to 100x slower and, with 2 threads, stalled eager PyTorch for
    # seconds per call on a trained checkpoint; the delegates flush them already, so eager does too.
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if a.artifact:
        from edgevit.runtime import load_artifact

        runner = load_artifact(a.artifact, threads=a.threads)
        shape = tuple(runner.manifest.inputs[0]["shape"])
    else:
        from edgevit.models import create_model
        from edgevit.runtime import TorchRunner

        runner = TorchRunner(create_model(a.eager, weights=a.weights, labelset=a.labelset))
        h, w = (int(v) for v in a.size.split("x"))
        shape = (1, 3, h, w)
    load_seconds = time.perf_counter() - start
    x = np.load(a.input) if a.input else np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if x.shape != tuple(shape) or x.dtype != np.float32:
        raise SystemExit(f"{a.input}: input {x.dtype} {x.shape} does not match the runner's float32 {tuple(shape)}")
    times = measure(runner, x, a.warmup, a.runs)
    peak_mb = peak_rss_mb()
    print(json.dumps({"load_seconds": load_seconds, "latencies": times, "peak_rss_mb": peak_mb,
                      "threads": a.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
