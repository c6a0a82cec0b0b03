"""Which strength unit keeps a relative strength comparable across models.

A relative strength ``s`` moves each steered layer by ``s`` times its norm in a strength unit
(``robust`` or ``mean_norm``, :func:`svf.steering_field.strength_scale`). The unit is fair when
the same ``s`` disturbs different models about equally. This measures, per unit, method and
strength, the mean KL divergence of the next-token distribution at the last prompt token
(steered against unsteered) on a concept's validation prompts: how hard the push is, as the
model feels it. Run it on several models and compare the KL at the same ``s``
(docs/EVALUATION.md, "Strength unit across models").

It also measures what the push buys: the concept score's gain at the last token of the last
steering layer (the field's scorer, steered minus unsteered), and the KL per unit of score
gain, for CAA and the SVF directions (gradient, preconditioned, natural): the natural direction
is built to gain the most score per unit of KL.

    python benchmarks/strength_units.py --model default --model gemma-3-270m --out runs/strength_units
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from svf.concepts import load_concept
from svf.layer_windows import default_layers
from svf.models import load_model
from svf.progress import progress_bar
from svf.steering import steer
from svf.steering_field import STRENGTH_UNITS, strength_scale
from svf.tokenization import encode_prompts
from svf.training import TrainConfig, train_field

STRENGTHS = (0.05, 0.1, 0.2, 0.4)


#: The methods: (steering method, SVF direction).
METHODS = {"caa": ("caa", None), "svf": ("svf", "gradient"), "svf-precond": ("svf", "preconditioned"),
           "svf-natural": ("svf", "natural")}


@torch.no_grad()
def _last(model, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities at the last token, and decoder layer ``layer``'s output there."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits[:, -1].float().log_softmax(-1), out.hidden_states[layer + 1][:, -1].float()


def measure(model, tokenizer, model_name: str, concept: str = "sentiment", n_prompts: int = 24,
            strengths: tuple[float, ...] = STRENGTHS, fisher_samples: int = 256) -> list[dict]:
    """KL and score-gain rows for one model: the field trained on ``concept`` (default layer
    windows, the natural direction from ``fisher_samples`` samples), every unit, method and
    strength."""
    train_layers, steer_layers = default_layers(model.config.num_hidden_layers)
    c = load_concept(concept)
    field, _ = train_field(model, tokenizer, c.pairs, concept=concept, train_layers=train_layers,
                           steer_layers=steer_layers, config=TrainConfig(max_epochs=10, fisher_samples=fisher_samples),
                           progress=False)
    prompts = c.validation_prompts[:n_prompts]
    ids, mask = encode_prompts(tokenizer, prompts)
    last = max(steer_layers)
    base, h0 = _last(model, ids, mask, last)
    score0 = field.scorer.score_layer(h0, last)
    rows = []
    todo = [(u, m, s) for u in STRENGTH_UNITS for m in METHODS for s in strengths]
    for unit, method, s in progress_bar(todo, desc=f"strength units {model_name}"):
        kind, direction = METHODS[method]
        with steer(model, field, strength=s, unit=unit, method=kind, direction=direction):
            lp, h = _last(model, ids, mask, last)
        kl = (base.exp() * (base - lp)).sum(-1)
        gain = field.scorer.score_layer(h, last) - score0
        rows.append({"model": model_name, "unit": unit, "method": method, "strength": s,
                     "kl_mean": float(kl.mean()), "kl_median": float(kl.median()),
                     "score_gain": float(gain.mean()), "kl_per_score": float(kl.mean() / gain.mean()),
                     "unit_value": strength_scale([field], steer_layers, unit),
                     "steer_layers": "+".join(map(str, steer_layers))})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model name or path (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the CSV and JSON")
    parser.add_argument("--fisher-samples", type=int, default=256, help="Fisher samples of the natural direction")
    args = parser.parse_args(argv)
    rows = []
    for name in args.model:
        model, tok = load_model(None if name == "default" else name)
        rows += measure(model, tok, name, fisher_samples=args.fisher_samples)
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "strength_units.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / "strength_units.json").write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"{r['model']:>22} {r['unit']:>9} {r['method']:>11} s={r['strength']:<5} "
              f"KL mean {r['kl_mean']:.4f} median {r['kl_median']:.4f} score gain {r['score_gain']:.3f} "
              f"KL/score {r['kl_per_score']:.4f} (unit {r['unit_value']:.1f})")


if __name__ == "__main__":
    main()
