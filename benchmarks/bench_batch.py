"""Per-request steering throughput: one mixed batch vs the rows one by one vs the batch unsteered.

Eight chat prompts, left-padded into one batch; three SVF fields of the default sizes (random
weights: speed does not depend on them; layer sets 12-21 / 14-19 / a two-concept softmin
entry) requested as ``[a, -, b, ab, a, b, -, ab]`` with eight different strengths; greedy
decoding of a fixed number of new tokens (EOS suppressed, so every mode makes as many). Modes:

* ``batch unsteered``: ``model.generate`` on the batch, no steering;
* ``batch mixed``: the same batch under :func:`svf.steer_requests` (one field-table launch
  per steered layer per step; ``set_requests`` inside the timed region);
* ``one by one``: each row alone, unpadded, under ``svf.steer`` with its own field (attach
  and detach inside the timed region: what a server without batching would do).

Each round runs the three modes in a rotated order; reported are the median time per mode,
throughput (new tokens per second) and the medians of the per-round time ratios. Before
timing, the mixed batch's tokens are compared with each row's solo tokens. Whole generations
vary by +-10% on a shared machine, so the steering's own cost is also measured per decode
step of the batch (paired rounds on one KV cache, as in ``bench_decode.py``): mixed fields
vs unsteered.

    python benchmarks/bench_batch.py                 # default model, CPU
    python benchmarks/bench_batch.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, figure, machine, random_scorer, write_csv

import svf
from svf.data import TEST_PROMPTS
from svf.generation import format_prompts
from svf.hf import hidden_size, num_layers
from svf.models import load_model
from svf.steering_field import SteeringField

REQUESTS = ["a", None, "b", "ab", "a", "b", None, "ab"]
STRENGTHS = [0.10, 0.0, 0.15, 0.12, -0.10, 0.08, 0.0, 0.20]
MODES = ("batch unsteered", "batch mixed", "one by one")


def make_fields(L: int, d: int, device: str) -> dict[str, object]:
    """Three entries of random default-size scorers (r = m = 64) on layers 12-21 / 14-19."""

    def field(seed: int, steer: tuple[int, ...]) -> SteeringField:
        scorer = random_scorer(d, tuple(range(12, 22)), seed=seed).to(device)
        return SteeringField(scorer, f"bench{seed}", "bench", L, steer, torch.full((10,), 100.0),
                             torch.randn(10, d))

    a, b, c = field(1, (14, 16, 18)), field(2, (15, 17)), field(3, (14, 16, 18))
    return {"a": a, "b": b, "ab": [a, c]}


def paired_step_ratio(model, enc, batch, rounds: int, sync) -> dict[str, float]:
    """One decode step of the batch, unsteered and with mixed fields, in paired rounds on the
    same KV cache (cropped back after each step; one untimed step per mode first)."""
    out = model(**enc, use_cache=True)
    cache = out.past_key_values
    start = cache.get_seq_length()
    nxt = out.logits[:, -1:].argmax(-1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(nxt)], 1)
    batch.set_requests(REQUESTS, STRENGTHS)
    times: dict[str, list[float]] = {"unsteered": [], "mixed": []}
    for r in tqdm(range(rounds + 1), desc="decode steps"):
        for mode in ("unsteered", "mixed") if r % 2 else ("mixed", "unsteered"):
            if mode == "mixed":
                batch.attach()
            try:
                for timed in (False, True):
                    sync()
                    t = time.perf_counter()
                    model(nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
                    sync()
                    dt = time.perf_counter() - t
                    cache.crop(start - cache.get_seq_length())
            finally:
                batch.detach()
            if r and timed:
                times[mode].append(dt)
    ratios = [a / b for a, b in zip(times["mixed"], times["unsteered"])]
    q = statistics.quantiles(ratios, n=4)
    return {"unsteered_ms": statistics.median(times["unsteered"]), "mixed_ms": statistics.median(times["mixed"]),
            "ratio": statistics.median(ratios), "q25": q[0], "q75": q[2]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7, help="rounds of whole generations")
    p.add_argument("--step-rounds", type=int, default=40, help="paired rounds of single decode steps")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    model, tok = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    fields = make_fields(num_layers(model), hidden_size(model), args.device)
    texts = format_prompts(tok, TEST_PROMPTS[: len(REQUESTS)])
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)
    solo = [tok(t, return_tensors="pt", add_special_tokens=False).to(args.device) for t in texts]
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
           "pad_token_id": tok.pad_token_id}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    batch = svf.steer_requests(model, fields)

    def unsteered():
        return model.generate(**enc, **gen)

    def mixed():
        with batch:
            return batch.generate(**enc, fields=REQUESTS, strengths=STRENGTHS, **gen)

    def one_by_one():
        outs = []
        for x, name, s in zip(solo, REQUESTS, STRENGTHS):
            if name is None:
                outs.append(model.generate(**x, **gen))
            else:
                with svf.steer(model, fields[name], strength=s):
                    outs.append(model.generate(**x, **gen))
        return outs

    runs = {"batch unsteered": unsteered, "batch mixed": mixed, "one by one": one_by_one}
    with torch.no_grad():
        n_in = enc["input_ids"].shape[1]
        mixed_new = mixed()[:, n_in:]
        alone_new = [o[0, x["input_ids"].shape[1]:] for o, x in zip(one_by_one(), solo)]
        base_new = unsteered()[:, n_in:]
        same = [bool(torch.equal(mixed_new[r], alone_new[r])) for r in range(len(REQUESTS))]
        moved = [bool(not torch.equal(mixed_new[r], base_new[r])) for r in range(len(REQUESTS))]
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for r in tqdm(range(args.rounds), desc="rounds"):
            order = MODES[r % 3:] + MODES[: r % 3]
            for mode in order:
                sync()
                t = time.perf_counter()
                runs[mode]()
                sync()
                times[mode].append(time.perf_counter() - t)
        step = paired_step_ratio(model, enc, batch, args.step_rounds, sync)
    tokens = len(REQUESTS) * args.new_tokens
    ratio = {m: statistics.median(a / b for a, b in zip(times[m], times["batch mixed"])) for m in MODES}
    rows = [{"model": args.model, "device": args.device, "dtype": args.dtype, "mode": m,
             "seconds_median": statistics.median(times[m]),
             "tokens_per_s": tokens / statistics.median(times[m]),
             "time_ratio": ratio[m], "rounds": args.rounds} for m in MODES]
    rows.append({"model": args.model, "device": args.device, "dtype": args.dtype,
                 "mode": "decode step: mixed / unsteered", "seconds_median": step["mixed_ms"],
                 "tokens_per_s": len(REQUESTS) / step["mixed_ms"], "time_ratio": step["ratio"],
                 "rounds": args.step_rounds})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"batch_{args.model}_{args.device}".replace("/", "_")
    write_csv(rows, args.out / f"{stem}.csv")
    _plot(rows[:3], args.out / f"{stem}.png")
    info = machine()
    print(f"\n{args.model} on {args.device} ({info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
          f"commit {info['commit']}), batch {len(REQUESTS)}, {args.new_tokens} new tokens per row, "
          f"{args.rounds} rounds")
    print(f"mixed batch == each row alone: {sum(same)}/{len(same)} rows {same}")
    print(f"steered rows whose tokens differ from unsteered: "
          f"{sum(m for m, n in zip(moved, REQUESTS) if n)}/{sum(n is not None for n in REQUESTS)}; "
          f"unsteered rows equal to the unsteered batch: "
          f"{all(not m for m, n in zip(moved, REQUESTS) if n is None)}")
    print(f"one decode step of the batch (KV cache of the prompts), {args.step_rounds} paired rounds: "
          f"unsteered {1e3 * step['unsteered_ms']:.1f} ms, mixed fields {1e3 * step['mixed_ms']:.1f} ms, "
          f"median per-round ratio {step['ratio']:.3f} (quartiles {step['q25']:.3f}-{step['q75']:.3f})")
    print("| mode | s per batch (median) | new tokens/s | time / batch mixed (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for r in rows[:3]:
        print(f"| {r['mode']} | {r['seconds_median']:.2f} | {r['tokens_per_s']:.1f} | {r['time_ratio']:.3f} |")
    return 0


def _plot(rows, path: Path) -> None:
    with figure(path, figsize=(6, 3)) as (_, ax):
        ax.barh([r["mode"] for r in rows], [r["tokens_per_s"] for r in rows])
        ax.set_xlabel("new tokens per second (8 rows)")
        ax.set_title(f"{rows[0]['model']} on {rows[0]['device']}: per-request steering")
        ax.invert_yaxis()


if __name__ == "__main__":
    raise SystemExit(main())
