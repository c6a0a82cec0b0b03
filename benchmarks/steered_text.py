"""Read the text behind an equal-fluency cell: greedy continuations of a concept's test prompts,
unsteered and steered with a field trained as the evaluation trains it.

The equal-fluency reports keep one text per kept point (``examples.json``); this shows more of
what a point writes, e.g. one word repeated: easy to predict, so a perplexity budget alone lets
it through, which is why the budget also charges for repetition (docs/EVALUATION.md,
"Results: Gemma-3-270M").

    python benchmarks/steered_text.py --model gemma-3-270m --concept topic-ocean \
        --positions inner --total-strength 1.35
"""

from __future__ import annotations

import argparse

import torch

import svf
from svf.concepts import load_concept
from svf.eval.base_field import eval_train_config
from svf.layer_windows import default_layers
from svf.models import load_model
from svf.training import TRAIN_POSITIONS, train_field


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="'default' or a registered model name")
    parser.add_argument("--concept", default="topic-ocean")
    parser.add_argument("--positions", choices=TRAIN_POSITIONS, default="last")
    parser.add_argument("--direction", choices=("gradient", "preconditioned", "natural"), default="gradient")
    parser.add_argument("--total-strength", type=float, default=1.35,
                        help="the evaluation's total strength, split over the steering layers; "
                             "negative steers away from the concept")
    parser.add_argument("--prompts", type=int, default=4, help="how many of the concept's last prompts")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(None if args.model == "default" else args.model)
    train_layers, steer_layers = default_layers(model.config.num_hidden_layers)
    concept = load_concept(args.concept)
    fisher = 256 if args.direction == "natural" else 0
    field, _ = train_field(model, tok, concept.pairs, concept=concept.name, train_layers=train_layers,
                           steer_layers=steer_layers, progress=False,
                           config=eval_train_config(positions=args.positions, fisher_samples=fisher))
    prompts = list(concept.prompts[-args.prompts:])
    strength = args.total_strength / len(steer_layers)
    base = svf.generate(model, tok, prompts, max_new_tokens=args.tokens)
    with svf.steer(model, field, strength=strength, layers=steer_layers, direction=args.direction):
        steered = svf.generate(model, tok, prompts, max_new_tokens=args.tokens)
    print(f"{args.concept}, scorer at {args.positions} positions, {args.direction}, total strength "
          f"{args.total_strength:g} ({strength:g} per layer at {list(steer_layers)}), greedy\n")
    for prompt, b, s in zip(prompts, base, steered):
        print(f"[prompt]    {prompt}\n[unsteered] {' '.join(b.split())}\n[steered]   {' '.join(s.split())}\n")


if __name__ == "__main__":
    main()
