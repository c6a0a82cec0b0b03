"""Which strength unit keeps a relative strength comparable across models.

A relative strength ``s`` moves each steered layer by ``s`` times its norm in a strength unit
(``robust`` or ``mean_norm``, :func:`svf.steering_field.strength_scale`). The unit is fair when
the same ``s`` disturbs different models about equally. This measures, per unit, method and
strength, the mean KL divergence of the next-token distribution at the last prompt token
(steered against unsteered) on a concept's validation prompts: how hard the push is, as the
model feels it. Run it on several models and compare the KL at the same ``s``
(docs/EVALUATION.md, "Strength unit across models").

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


@torch.no_grad()
def _last_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
    return logits.log_softmax(-1)


def measure(model, tokenizer, model_name: str, concept: str = "sentiment", n_prompts: int = 24,
            strengths: tuple[float, ...] = STRENGTHS) -> list[dict]:
    """KL rows for one model: the field trained on ``concept`` (default layer windows), every
    unit, method (CAA, SVF, SVF with the preconditioned direction) and strength."""
    train_layers, steer_layers = default_layers(model.config.num_hidden_layers)
    c = load_concept(concept)
    field, _ = train_field(model, tokenizer, c.pairs, concept=concept, train_layers=train_layers,
                           steer_layers=steer_layers, config=TrainConfig(max_epochs=10), progress=False)
    prompts = c.validation_prompts[:n_prompts]
    ids, mask = encode_prompts(tokenizer, prompts)
    base = _last_logprobs(model, ids, mask)
    rows = []
    todo = [(u, m, s) for u in STRENGTH_UNITS for m in ("caa", "svf", "svf-precond") for s in strengths]
    for unit, method, s in progress_bar(todo, desc=f"strength units {model_name}"):
        kind, direction = ("svf", "preconditioned") if method == "svf-precond" else (method, None)
        with steer(model, field, strength=s, unit=unit, method=kind, direction=direction):
            lp = _last_logprobs(model, ids, mask)
        kl = (base.exp() * (base - lp)).sum(-1)
        rows.append({"model": model_name, "unit": unit, "method": method, "strength": s,
                     "kl_mean": float(kl.mean()), "kl_median": float(kl.median()),
                     "unit_value": strength_scale([field], steer_layers, unit),
                     "steer_layers": "+".join(map(str, steer_layers))})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model name or path (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the CSV and JSON")
    args = parser.parse_args(argv)
    rows = []
    for name in args.model:
        model, tok = load_model(None if name == "default" else name)
        rows += measure(model, tok, name)
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "strength_units.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / "strength_units.json").write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"{r['model']:>22} {r['unit']:>9} {r['method']:>11} s={r['strength']:<5} "
              f"KL mean {r['kl_mean']:.4f} median {r['kl_median']:.4f} (unit {r['unit_value']:.1f})")


if __name__ == "__main__":
    main()
