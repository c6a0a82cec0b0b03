"""Held-out accuracy at the last token and inside the texts, training at the last token or at
inner positions (``TrainConfig.positions``).

A field scores every generated token, inside unfinished text, while a last-token scorer has
only seen finished texts' last tokens. This trains each concept's field both ways (the default
model, layers 12-21, steering 16,18,20, the default ``TrainConfig`` otherwise) and prints, per
concept and mode, the held-out accuracy (mean over the training layers) of the scorer and of the
linear CAA baseline at the last token and at the positions inside the texts, with the wall
time of the activation extraction and of the scorer's training.

    python benchmarks/inner_positions.py --out runs/inner_positions.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import torch

from svf.cli.options import parse_layers
from svf.concepts import load_concept
from svf.models import load_model
from svf.training import TRAIN_POSITIONS, TrainConfig, pair_features, train_field

COLUMNS = ("concept", "positions", "pairs", "train_samples", "scorer_acc_last", "scorer_acc_inner",
           "linear_acc_last", "linear_acc_inner", "best_epoch", "epochs", "extract_s", "train_s")


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else float("nan")


def measure(model, tokenizer, concept: str, positions: str, train_layers: list[int],
            steer_layers: list[int], seed: int) -> dict:
    """One field: its held-out accuracies (mean over the training layers) and wall times."""
    pairs = load_concept(concept).pairs
    config = TrainConfig(seed=seed, positions=positions)
    t0 = time.perf_counter()
    feats = pair_features(model, tokenizer, pairs, train_layers, config, progress=False)
    t1 = time.perf_counter()
    _, report = train_field(model, tokenizer, pairs, concept=concept, train_layers=train_layers,
                            steer_layers=steer_layers, config=config, features=feats, progress=False)
    t2 = time.perf_counter()
    train = feats.train
    samples = (len(train.pos) + len(train.neg) if positions == "last"
               else len(train.pos_inner.hidden) + len(train.neg_inner.hidden)) * len(train_layers)
    return {
        "concept": concept, "positions": positions, "pairs": len(pairs), "train_samples": samples,
        "scorer_acc_last": _mean(report.per_layer, "scorer_acc"),
        "scorer_acc_inner": _mean(report.per_layer, "scorer_acc_inner"),
        "linear_acc_last": _mean(report.per_layer, "linear_acc"),
        "linear_acc_inner": _mean(report.per_layer, "linear_acc_inner"),
        "best_epoch": report.best_epoch, "epochs": report.history[-1]["epoch"],
        "extract_s": t1 - t0, "train_s": t2 - t1,
    }


def markdown(rows: list[dict]) -> str:
    head = ("| concept | trained at | scorer acc last | scorer acc inner | CAA acc last | CAA acc inner "
            "| train samples | epochs (best) | extract s | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['concept']} | {r['positions']} | {r['scorer_acc_last']:.3f} | "
                     f"{r['scorer_acc_inner']:.3f} | {r['linear_acc_last']:.3f} | {r['linear_acc_inner']:.3f} | "
                     f"{r['train_samples']} | {r['epochs']} ({r['best_epoch']}) | {r['extract_s']:.1f} | "
                     f"{r['train_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--concepts", nargs="+", default=["sentiment", "formality"])
    parser.add_argument("--positions", nargs="+", choices=TRAIN_POSITIONS, default=list(TRAIN_POSITIONS),
                        help="training modes to compare (default: both)")
    parser.add_argument("--layers", type=parse_layers, default=list(range(12, 22)),
                        help="training layers (default: 12-21)")
    parser.add_argument("--steer-layers", type=parse_layers, default=[16, 18, 20],
                        help="steering layers (default: 16,18,20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    rows = [measure(model, tok, c, p, args.layers, args.steer_layers, args.seed)
            for c in args.concepts for p in args.positions]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
    device = next(model.parameters()).device
    print(f"model {args.model or 'SmolLM2-135M-Instruct'}, layers {args.layers[0]}-{args.layers[-1]}, "
          f"steer {args.steer_layers}, seed {args.seed}; {device}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}; accuracies: held-out mean over layers\n")
    print(markdown(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
