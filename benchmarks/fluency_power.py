"""How many prompts and samples the equal-fluency comparison needs: a pilot on validation prompts.

The comparison's verdict is a paired difference of per-prompt judge shifts (method A minus
method B) with a bootstrap interval over prompts. Its half-width is about
``1.96 * sqrt(var_prompt + var_sample / S) / sqrt(n)`` for n prompts and S samples each:
``var_prompt`` the spread of the true per-prompt differences, ``var_sample`` the sampling noise
of one sample's difference. This measures both on *validation* prompts (the test split stays
unread), at one total strength and both signs, with several samples per prompt, and prints the
predicted half-width for choices of n and S. It also times generation, for sizing the runs.

    python benchmarks/fluency_power.py --concept sentiment --out runs/fluency_power
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch

from svf.concepts import load_concept
from svf.eval.base_field import eval_train_config
from svf.eval.evaluate_fluency import FluencySettings, Point, _Runner, fluency_methods
from svf.eval.judges import concept_judges
from svf.layer_windows import default_layers
from svf.models import load_model
from svf.progress import progress_bar
from svf.steering_field import strength_scale
from svf.training import train_field


def variance_parts(a: torch.Tensor, b: torch.Tensor, sign: int) -> dict:
    """Judge scores ``[P, S]`` of two methods on the same prompts and seeds: the within-prompt
    variance of one sample's difference and the between-prompt variance of the true per-prompt
    difference (clamped at 0)."""
    d = sign * (a - b)
    S = d.shape[1]
    within = float(d.var(1, unbiased=True).mean())
    between = max(0.0, float(d.mean(1).var(unbiased=True)) - within / S)
    return {"mean_diff": float(d.mean()), "var_sample": within, "var_prompt": between}


def half_width(parts: dict, n: int, samples: int) -> float:
    return 1.96 * math.sqrt(parts["var_prompt"] + parts["var_sample"] / samples) / math.sqrt(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--concept", default="sentiment")
    ap.add_argument("--compare", nargs="+", default=["svf:caa", "svf:prompt"], metavar="A:B",
                    help="method pairs to compare (default: %(default)s)")
    ap.add_argument("--total-strength", type=float, default=0.45)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/fluency_power"))
    args = ap.parse_args()
    pairs = [tuple(x.split(":", 1)) for x in args.compare]
    model, tok = load_model(None if args.model == "default" else args.model)
    train_layers, steer_layers = default_layers(model.config.num_hidden_layers)
    concept = load_concept(args.concept)
    t0 = time.perf_counter()
    field, _ = train_field(model, tok, concept.pairs, concept=concept.name, train_layers=train_layers,
                           steer_layers=steer_layers, config=eval_train_config(), progress=False)
    t_train = time.perf_counter() - t0
    names = tuple(dict.fromkeys(n for p in pairs for n in p))
    settings = FluencySettings(methods=names)
    methods = fluency_methods(field, steer_layers, settings)
    scale = strength_scale([field], steer_layers)
    judge = concept_judges(concept)[0]["embed"]
    run = _Runner(model, tok, concept, scale, judge, settings, None, 0)
    val = concept.validation_prompts
    scores: dict[tuple[str, int], torch.Tensor] = {}
    t0 = time.perf_counter()
    todo = [(n, sg) for n in names for sg in (1, -1)]
    for name, sign in progress_bar(todo, desc="pilot", enabled=True):
        point = Point(0.0, "plain") if name == "prompt" else Point(args.total_strength)
        scores[(name, sign)] = run.measure(val, args.samples, methods[name], sign, point).scores
    t_gen = time.perf_counter() - t0
    n_gen = len(todo) * len(val) * args.samples
    rows = []
    for a, b in pairs:
        for sign in (1, -1):
            parts = variance_parts(scores[(a, sign)], scores[(b, sign)], sign)
            rows.append({"concept": concept.name, "a": a, "b": b, "sign": sign, **parts,
                         **{f"hw_n{n}_s{s}": half_width(parts, n, s) for n in (33, 77) for s in (1, 2, 3, 4)}})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{concept.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    facts = {"model": args.model, "concept": concept.name, "train_s": round(t_train), "gen_s": round(t_gen),
             "generations": n_gen, "s_per_generation": t_gen / n_gen, "threads": torch.get_num_threads(),
             "total_strength": args.total_strength, "samples": args.samples, "prompts": len(val)}
    (args.out / f"{concept.name}.json").write_text(json.dumps(facts, indent=1) + "\n")
    keys = ["a", "b", "sign", "mean_diff", "var_sample", "var_prompt", "hw_n77_s1", "hw_n77_s2", "hw_n77_s4"]
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
