"""Steered decoding inside CUDA graphs: per-token time of one captured decode step, per mode.

A randomly initialised Llama-3-8B-shaped model (bf16), a static KV cache holding a prompt, and
the decode step (one new token per row) captured as one CUDA graph per mode, with the fields
attached while capturing (``positions="last"``: no host logic in the step):

* ``unsteered``; ``svf/4`` (four middle layers) and ``svf/all`` (every layer), one field, K = 1;
* ``svf/4 triton``: ``svf/4`` with the op on the Triton backend (where Triton runs);
* ``table/all`` (batches above 1): three named entries on every layer, rows mixed over them and
  unsteered rows (:func:`svf.steer_requests`, one field-table launch per layer);
* for the record, eager (no graph): ``unsteered eager`` and the paper-style autograd path on
  the four layers, ``svf-paper/4 eager``.

Each round replays every mode once, in a rotated order, timed by CUDA events around the
replay (eager modes: around the call); the KV cache's length is reset before each step, so
every step decodes the same position. Reported: median ms per step and the median per-round
ratio to the unsteered graph, with quartiles. Without CUDA (``--device cpu``, a small model)
the same steps run eagerly and are timed by the wall clock: that checks the script, not speed.

    python benchmarks/gpu/decode_graphs.py --device cuda --batch 1 16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    RANDOM_LLAMAS,
    RESULTS,
    batch_ratio_bars,
    machine,
    random_llama,
    random_scorer,
    svf_backend,
    write_csv,
)
from paper_style import PaperStyleSteering

import svf
from svf.steering import steer
from svf.steering_field import SteeringField
from svf_kernels import available_backends


class DecodeStep:
    """One decode step of ``batch`` rows on a static cache holding ``prompt`` tokens."""

    def __init__(self, model, batch: int, prompt: int, device: str) -> None:
        from transformers import StaticCache

        self.model, self.prompt = model, prompt
        self.cache = StaticCache(config=model.config, max_cache_len=prompt + 8)
        ids = torch.randint(100, 1000, (batch, prompt), device=device)
        with torch.no_grad():
            model(ids, past_key_values=self.cache, use_cache=True)
        # Static inputs of the step: the new token, its position, and a 4-D mask (used as given).
        self.ids = torch.randint(100, 1000, (batch, 1), device=device)
        self.positions = torch.full((batch, 1), prompt, dtype=torch.long, device=device)
        mask = torch.zeros(batch, 1, 1, prompt + 8, dtype=torch.bool, device=device)
        mask[..., : prompt + 1] = True
        self.mask = mask

    def rewind(self) -> None:
        """Put every layer's cache length back to the prompt's (the step then writes one slot)."""
        for layer in self.cache.layers:
            length = getattr(layer, "cumulative_length", None)
            if isinstance(length, torch.Tensor):
                length.fill_(self.prompt)

    def __call__(self) -> torch.Tensor:
        return self.model(self.ids, attention_mask=self.mask, position_ids=self.positions,
                          past_key_values=self.cache, use_cache=True).logits


class Captured:
    """The step with ``steering`` attached, captured as a CUDA graph (on CUDA; else run as is).

    Holds ``steering``: the graph reads its fields' buffers at every replay.
    """

    def __init__(self, step: DecodeStep, steering: contextlib.AbstractContextManager,
                 kernel_backend: str | None) -> None:
        self.step, self.steering, self.kernel_backend = step, steering, kernel_backend
        self.graph = None
        if not step.ids.is_cuda:
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with steering, svf_backend(kernel_backend):
            with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
                for _ in range(3):
                    step.rewind()
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            step.rewind()
            with torch.cuda.graph(graph):
                self.logits = step()
        self.graph = graph

    def __call__(self) -> torch.Tensor:
        if self.graph is None:
            return self.eager()
        self.graph.replay()
        return self.logits

    def eager(self) -> torch.Tensor:
        """The same step without the graph: what the replay must reproduce."""
        with self.steering, svf_backend(self.kernel_backend):
            return self.step()


def check_replays(step: DecodeStep, runs: dict[str, tuple[Callable, bool]]) -> list[dict]:
    """Each captured mode's replay against the same step run eagerly, and against unsteered.

    ``graph_vs_eager``: max |replay - eager| / max |eager| over the logits; ``moved``: max
    |logits - unsteered logits| / max |unsteered logits| (0 would mean nothing was steered).
    """
    step.rewind()
    base = step().float().clone()
    out = []
    for name, (fn, _) in runs.items():
        if not isinstance(fn, Captured):
            continue
        step.rewind()
        replay = fn().float().clone()
        step.rewind()
        eager = fn.eager().float()
        scale = eager.abs().max().item()
        out.append({"mode": name, "graph_vs_eager": (replay - eager).abs().max().item() / scale,
                    "moved": (replay - base).abs().max().item() / base.abs().max().item()})
    return out


def table_entries(L: int, d: int, device: str) -> dict[str, object]:
    """Three named entries of random default-size scorers on every layer."""
    def field(seed: int) -> SteeringField:
        scorer = random_scorer(d, tuple(range(L)), seed=seed).to(device)
        return SteeringField(scorer, f"bench{seed}", "bench", L, tuple(range(L)), torch.ones(L),
                             torch.randn(L, d))

    a, b, c = field(1), field(2), field(3)
    return {"a": a, "b": b, "ab": [a, c]}


def modes(model, step: DecodeStep, batch: int, device: str) -> dict[str, tuple[Callable, bool]]:
    """Mode name -> (the callable that runs one step, whether it is a captured graph)."""
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    four, every = list(range(L // 2 - 2, L // 2 + 2)), list(range(L))
    scorer = random_scorer(d, tuple(every)).to(device)
    field = SteeringField(scorer, "bench", "bench", L, tuple(every), torch.ones(L), torch.randn(L, d))
    graphed = step.ids.is_cuda
    out: dict[str, tuple[Callable, bool]] = {}

    def svf_on(layers):
        return steer(model, field, alpha=1.0, layers=layers, positions="last")

    out["unsteered"] = (Captured(step, contextlib.nullcontext(), None), graphed)
    out["svf/4"] = (Captured(step, svf_on(four), None), graphed)
    out["svf/all"] = (Captured(step, svf_on(every), None), graphed)
    if "triton" in available_backends(torch.device(device).type):
        out["svf/4 triton"] = (Captured(step, svf_on(four), "triton"), graphed)
    if batch > 1:
        table = svf.steer_requests(model, table_entries(L, d, device), positions="last")
        names = (["a", "b", "ab", None] * batch)[:batch]
        table.set_requests(names, [1.0 if n else 0.0 for n in names])
        out["table/all"] = (Captured(step, table, None), graphed)
    out["unsteered eager"] = (step, False)
    paper = PaperStyleSteering(model, scorer, dict.fromkeys(four, 1.0))

    def paper_step() -> None:
        with paper:
            step()
    out["svf-paper/4 eager"] = (paper_step, False)
    return out


def paired_times(step: DecodeStep, runs: dict[str, tuple[Callable, bool]], rounds: int
                 ) -> dict[str, list[float]]:
    """Seconds per step, per mode, over ``rounds`` rounds (rotated order; one warm-up round)."""
    cuda = step.ids.is_cuda
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, _ = runs[name]
            step.rewind()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                end.synchronize()
                dt = start.elapsed_time(end) / 1e3
            else:
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
            if r:
                times[name].append(dt)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b-random", choices=sorted(RANDOM_LLAMAS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    model = random_llama(args.model, args.device, getattr(torch, args.dtype))
    rows, checks = [], []
    with torch.no_grad():
        for batch in args.batch:
            step = DecodeStep(model, batch, args.prompt_tokens, args.device)
            runs = modes(model, step, batch, args.device)
            checks += [{"batch": batch, **c} for c in check_replays(step, runs)]
            times = paired_times(step, runs, args.rounds)
            base = times["unsteered"]
            for name, (_, graphed) in runs.items():
                ratios = [t / b for t, b in zip(times[name], base)]
                q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
                rows.append({"model": args.model, "device": args.device, "dtype": args.dtype,
                             "batch": batch, "mode": name, "cuda_graph": graphed,
                             "ms_per_token": 1e3 * statistics.median(times[name]),
                             "ratio_to_unsteered_graph": statistics.median(ratios),
                             "ratio_q25": q[0], "ratio_q75": q[2], "rounds": len(ratios)})
            del runs, step
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"decode_graphs_{args.model}_{args.device}"
    write_csv(rows, args.out / f"{stem}.csv")
    write_csv(checks, args.out / f"{stem}_checks.csv")
    kind = [r for r in rows if r["cuda_graph"] == rows[0]["cuda_graph"]]  # graphs only on CUDA
    batch_ratio_bars(kind, args.out / f"{stem}.png", "ratio_to_unsteered_graph", 1.02,
                     "per-token time / unsteered graph")
    info = machine()
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else info["cpu"]
    print(f"\n{args.model}, {args.dtype}, on {card} (torch {info['torch']}, commit {info['commit']}), "
          f"prompt {args.prompt_tokens} tokens, {args.rounds} paired rounds: median ms per decode "
          "step, median (quartiles) of the per-round ratio to the unsteered graph")
    print("Replays against the same step run eagerly (max |difference| / max |logit|), and how "
          "far steering moved the logits from unsteered:")
    print("| batch | mode | replay vs eager | moved |\n| --- | --- | --- | --- |")
    for c in checks:
        print(f"| {c['batch']} | {c['mode']} | {c['graph_vs_eager']:.2e} | {c['moved']:.2e} |")
    print()
    print("| batch | mode | CUDA graph | ms/token | x unsteered graph | quartiles |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['mode']} | {'yes' if r['cuda_graph'] else 'no'} | "
              f"{r['ms_per_token']:.3f} | {r['ratio_to_unsteered_graph']:.3f} | "
              f"{r['ratio_q25']:.3f}-{r['ratio_q75']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
