"""End-to-end decode latency: unsteered vs CAA vs SVF paper-style vs SVF fused.

Per-token latency of decoding with a KV cache (one forward step, one new token per row),
K = 1 (the field is recomputed at every token), for 1 layer, 4 layers and all layers
steered. ``wrappers/all`` attaches the fused path's layer wrappers and position hook on every
layer with a field that does nothing: what the Python around the op costs, apart from the op.
All modes are timed in paired rounds in one process (each round: one step in every mode, same
cache), reported as the median per-round ratio to unsteered.

    python benchmarks/bench_decode.py                      # default model, CPU
    python benchmarks/bench_decode.py --model llama3-8b-random --device cuda --dtype bfloat16 --batch 1 16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RANDOM_LLAMAS,
    RESULTS,
    batch_ratio_bars,
    machine,
    random_llama,
    random_scorer,
    write_csv,
)
from paper_style import PaperStyleSteering

from svf.hf import hidden_size, num_layers
from svf.steering import Steering, steer
from svf.steering_field import SteeringField
from svf_kernels import RowField


class NoField(RowField):
    """A row field that moves nothing (the ``wrappers`` mode)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        return rows


def load(name: str, device: str, dtype: torch.dtype):
    """The default model, or a randomly initialised Llama shape of :data:`common.RANDOM_LLAMAS`."""
    if name in RANDOM_LLAMAS:
        return random_llama(name, device, dtype), None
    from svf.models import load_model

    return load_model(name, dtype=dtype, device=device)


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def _steering(model, mode: str, layers, scorer, field):
    """The context that puts ``model`` in ``mode`` (nothing for unsteered)."""
    if layers is None:
        return contextlib.nullcontext()
    if mode.startswith("svf-paper"):
        return PaperStyleSteering(model, scorer, dict.fromkeys(layers, 1.0))
    if mode.startswith("wrappers"):
        return Steering(model, {i: NoField(hidden_size(model)) for i in layers}, dict.fromkeys(layers, 1.0))
    return steer(model, field, alpha=1.0, layers=layers, method="caa" if mode.startswith("caa") else "svf")


def paired_step_times(model, ids, modes, scorer, field, rounds: int) -> dict[str, list[float]]:
    """Seconds of one decode step (one new token per row, KV cache of the prompt) per mode.

    Every round times one step in every mode, in a rotated order, on the same cache (cropped
    back after each step), so each mode sees the same machine noise; the first round warms up
    and is dropped. Attaching and detaching stay outside the timed region, and in every mode
    one untimed step runs before the timed one: the steady per-token cost of generation, not
    the first call after building the wrappers.
    """
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    out = model(ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache = out.past_key_values
    start = cache.get_seq_length()
    nxt = out.logits[:, -1:].argmax(-1)
    mask = torch.ones(ids.shape[0], start + 1, dtype=ids.dtype, device=ids.device)
    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    for r in tqdm(range(rounds + 1), desc=f"decode steps, batch {ids.shape[0]}"):
        shift = r % len(modes)
        for mode, layers in modes[shift:] + modes[:shift]:
            with _steering(model, mode, layers, scorer, field):
                model(nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
                cache.crop(start - cache.get_seq_length())
                sync()
                t = time.perf_counter()
                model(nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
                sync()
                dt = time.perf_counter() - t
            cache.crop(start - cache.get_seq_length())  # drop the new token (negative: remove)
            if r:
                times[mode].append(dt)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=40, help="timed decode steps per mode")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    model, _ = load(args.model, args.device, dtype)
    L, d = num_layers(model), hidden_size(model)
    scorer = random_scorer(d, tuple(range(L))).to(args.device)
    field = SteeringField(scorer, "bench", args.model, L, tuple(range(L)), torch.ones(L), torch.randn(L, d))
    layer_sets = {"1": [L // 2], "4": list(range(L // 2 - 2, L // 2 + 2)), "all": list(range(L))}
    modes = [("unsteered", None)]
    for name, layers in layer_sets.items():
        modes += [(f"caa/{name}", layers), (f"svf-paper/{name}", layers), (f"svf-fused/{name}", layers)]
    modes.append(("wrappers/all", layer_sets["all"]))
    rows = []
    for batch in args.batch:
        torch.manual_seed(0)
        ids = torch.randint(100, 1000, (batch, args.prompt_tokens), device=args.device)
        with torch.no_grad():
            times = paired_step_times(model, ids, modes, scorer, field, args.rounds)
        base = times["unsteered"]
        for mode, _ in modes:
            paired = [t / b for t, b in zip(times[mode], base)]
            rows.append({"model": args.model, "device": args.device, "dtype": args.dtype, "batch": batch,
                         "mode": mode, "ms_per_token": 1e3 * statistics.median(times[mode]),
                         "ratio_to_unsteered": statistics.median(paired),
                         "ratio_q25": _quantile(paired, 0.25), "ratio_q75": _quantile(paired, 0.75),
                         "rounds": len(paired)})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"decode_{args.model}_{args.device}".replace("/", "_")
    write_csv(rows, args.out / f"{stem}.csv")
    batch_ratio_bars(rows, args.out / f"{stem}.png", "ratio_to_unsteered", 1.05,
                     "per-token latency / unsteered")
    info = machine()
    print(f"\n{args.model} on {args.device} ({info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
          f"commit {info['commit']}), prompt {args.prompt_tokens} tokens, {args.rounds} paired rounds: "
          "median ms per decode step, median (and quartiles) of the per-round ratio to unsteered")
    print("| batch | mode | ms/token | x unsteered | quartiles |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['mode']} | {r['ms_per_token']:.2f} | {r['ratio_to_unsteered']:.3f} "
              f"| {r['ratio_q25']:.3f}-{r['ratio_q75']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
