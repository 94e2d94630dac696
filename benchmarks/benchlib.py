"""Shared pieces of the benchmark scripts: data location, threads and load, FLOP counts, sgemm peak.

Imported by ``bench_scoring.py``, ``bench_sft.py`` and ``gpu_check.py`` (run as scripts from any
directory: each puts this folder and the repository on ``sys.path``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
XSUM_REL = Path("shared") / "data" / "selfrec" / "xsum"
DEFAULT_THREADS = 1
THREADS_HELP = (f"torch CPU threads (default {DEFAULT_THREADS}: the figures are ratios, and on a machine shared "
                "with other jobs one thread per process is the steadiest)")


def find_xsum(explicit: str | None = None) -> Path | None:
    """``explicit``, else the first ``shared/data/selfrec/xsum`` beside the repository or above it."""
    if explicit:
        return Path(explicit)
    for parent in REPO.parents:
        cand = parent / XSUM_REL
        if (cand / "articles.jsonl").is_file():
            return cand
    return None


def set_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine() -> dict:
    """What a reader needs to judge timings on a shared machine."""
    import torch

    return {"cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class Clock:
    """Wall and process CPU time of a block, accumulated per name."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn, sync=None):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if sync is not None:
            sync()
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0
        return out


# ----------------------------------------------------------------------------- FLOPs


def linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of one Llama decoder layer."""
    h = config.hidden_size
    heads = config.num_attention_heads
    d = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", heads) * d
    i = config.intermediate_size
    return [(h, heads * d), (h, kv), (h, kv), (heads * d, h), (h, i), (h, i), (i, h)]


def flops_per_token(config) -> int:
    """Forward FLOPs of the decoder's linear layers for one token (2 per multiply-add)."""
    return 2 * config.num_hidden_layers * sum(a * b for a, b in linear_shapes(config))


def attention_flops(config, pairs: int) -> int:
    """Forward FLOPs of q·kᵀ and p·v for ``pairs`` (query, key) pairs in every layer."""
    heads = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 4 * config.num_hidden_layers * heads * d * pairs


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def sgemm_gflops(config, rows: int = 2048, repeats: int = 5, device: str = "cpu", dtype=None) -> dict[str, float]:
    """Measured matmul GFLOP/s at the model's linear shapes (``rows`` tokens), FLOP-weighted, best of
    ``repeats``: per second of wall time (``wall``) and per second of this process's CPU time
    (``cpu``: what the threads got, steadier on a loaded machine)."""
    import torch

    dtype = dtype or torch.float32
    x_by_in = {}
    total_flops, wall_s, cpu_s = 0, 0.0, 0.0
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for n_in, n_out in linear_shapes(config):
        x = x_by_in.setdefault(n_in, torch.randn(rows, n_in, device=device, dtype=dtype))
        w = torch.randn(n_out, n_in, device=device, dtype=dtype)
        x @ w.t()  # warm-up
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            x @ w.t()
            sync()
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        total_flops += 2 * rows * n_in * n_out
        wall_s += best_wall
        cpu_s += best_cpu
    return {"wall": total_flops / wall_s / 1e9, "cpu": total_flops / max(cpu_s, 1e-9) / 1e9}
