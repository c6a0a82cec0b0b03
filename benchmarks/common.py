"""Shared pieces of the benchmarks: random fields of given sizes, timing, machine facts."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from svf.scorer import ConceptScorer, ScorerConfig

RESULTS = Path(__file__).resolve().parent / "results"


def random_scorer(d: int, layers: tuple[int, ...], r: int = 64, m: int = 64, seed: int = 0) -> ConceptScorer:
    """A scorer of the default sizes with random weights (latency does not depend on them)."""
    torch.manual_seed(seed)
    scorer = ConceptScorer(ScorerConfig(d, layers, r=r, m=m))
    with torch.no_grad():
        for p in scorer.parameters():
            p.normal_(0, 0.3)
    return scorer.eval()


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(n_bytes: int = 256 << 20) -> float:
    """Measured copy bandwidth (bytes read + written per second) of this machine."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), repeats=5)
    return 2 * n_bytes / t


def machine() -> dict[str, str]:
    """Machine, commit and threads for the results header."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": str(torch.get_num_threads()), "torch": torch.__version__, "commit": commit}


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) as a CSV with a header; returns ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


#: Randomly initialised Llama shapes for the GPU benchmarks (no download): Llama-3-8B's, and a
#: small one that checks the scripts on a CPU.
RANDOM_LLAMAS = {
    "llama3-8b-random": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 8,
                         "vocab_size": 128256, "max_position_embeddings": 8192,
                         "rope_theta": 500000.0},
    "tiny-llama-random": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                          "max_position_embeddings": 512},
}


def random_llama(name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised Llama of the named shape (:data:`RANDOM_LLAMAS`), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**RANDOM_LLAMAS[name]))
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


@contextlib.contextmanager
def svf_backend(name: str | None) -> Iterator[None]:
    """``SVF_BACKEND`` set to ``name`` inside the block (None: left as it is)."""
    old = os.environ.get("SVF_BACKEND")
    if name is not None:
        os.environ["SVF_BACKEND"] = name
    try:
        yield
    finally:
        if name is not None:
            if old is None:
                os.environ.pop("SVF_BACKEND", None)
            else:
                os.environ["SVF_BACKEND"] = old


@contextlib.contextmanager
def figure(path: Path, **subplots: object) -> Iterator[tuple]:
    """``(fig, axes)`` of ``plt.subplots(**subplots)`` on the Agg backend; laid out and saved to
    ``path`` (120 dpi) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def batch_ratio_bars(rows: list[dict], path: Path, ratio: str, target: float, xlabel: str) -> None:
    """One panel per batch size: each mode's ``row[ratio]`` as a bar, with 1 and ``target`` marked."""
    batches = sorted({r["batch"] for r in rows})
    with figure(path, nrows=1, ncols=len(batches), figsize=(7 * len(batches), 4), squeeze=False) as (_, axes):
        for ax, b in zip(axes[0], batches):
            sel = [r for r in rows if r["batch"] == b]
            ax.barh([r["mode"] for r in sel], [r[ratio] for r in sel])
            ax.axvline(1.0, color="k", lw=0.8)
            ax.axvline(target, color="r", lw=0.8, ls="--", label=f"+{target - 1:.0%}")
            ax.set_xlabel(xlabel)
            ax.set_title(f"batch {b}")
            ax.invert_yaxis()
            ax.legend()
