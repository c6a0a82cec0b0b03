"""``svf demo``: train a sentiment field on the default model and compare steering methods.

The layers are derived from the model's depth (:func:`svf.layer_windows.default_layers`:
train 12-21, steer 16, 18, 20 on the default model's 30 layers) unless given; those layers and
the strength were chosen on the validation prompts (``VALIDATION_PROMPTS``); the table is made
on held-out prompts (``TEST_PROMPTS``) that played no part in the choice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..arguments import check_int
from ..data import TEST_PROMPTS, min_split_size, sentiment_pairs
from ..generation import generate
from ..hf import layer_list, num_layers
from ..layer_windows import default_layers, resolve_layers
from ..models import load_model
from ..steering import steer
from ..training import TrainConfig, train_field

#: The default model's depth, and the layers the demo derives from it (train 12-21, steer
#: 16, 18, 20).
DEFAULT_MODEL_LAYERS = 30
DEMO_TRAIN_LAYERS, DEMO_STEER_LAYERS = default_layers(DEFAULT_MODEL_LAYERS)
DEMO_STRENGTH = 0.25  # relative strength per steered layer (robust unit), as svf.steer takes it
DEMO_FRACTIONS = (0.5, 0.17, 0.33)

DEMO_RUNS = (
    ("unsteered", None, 0.0),
    ("CAA +", "caa", +1.0),
    ("CAA -", "caa", -1.0),
    ("SVF +", "svf", +1.0),
    ("SVF -", "svf", -1.0),
)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(
    pairs: int = 300, prompts: int = 6, max_new_tokens: int = 40, seed: int = 0, width: int = 72,
    train_layers: Sequence[int] | None = None, steer_layers: Sequence[int] | None = None,
    layer_names: tuple[str, str] = ("train_layers", "steer_layers"),
) -> dict[str, list[float]]:
    """Train, steer, judge with VADER, print one table; returns VADER scores per method.

    ``pairs``: sentiment pairs to train on (at least enough for 2 in each split part);
    ``prompts``: how many of the held-out ``TEST_PROMPTS`` to continue (>= 1);
    ``train_layers`` / ``steer_layers``: None derives them from the model's depth
    (:func:`svf.layer_windows.resolve_layers`); ``layer_names``: what errors about the two
    call them (the command line names its options).
    """
    check_int(pairs, "pairs", minimum=min_split_size(DEMO_FRACTIONS))
    check_int(prompts, "prompts", minimum=1)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 1)
    check_int(width, "width", minimum=2)
    for name, layers in zip(layer_names, (train_layers, steer_layers)):
        if layers is not None:
            layer_list(layers, name)
    # the judge needs the 'eval' extra: fail before minutes of training, not after
    from ..eval.judges import vader_compound

    torch.manual_seed(seed)
    t0 = time.time()
    model, tok = load_model()
    print(f"model: SmolLM2-135M-Instruct ({time.time() - t0:.1f}s to load)")
    train_layers, steer_layers = resolve_layers(num_layers(model), train_layers, steer_layers,
                                                train_name=layer_names[0], steer_name=layer_names[1])
    field, report = train_field(
        model, tok, sentiment_pairs(pairs, seed=seed), concept="sentiment",
        train_layers=train_layers, steer_layers=steer_layers,
        config=TrainConfig(seed=seed, fractions=DEMO_FRACTIONS), model_name="SmolLM2-135M-Instruct",
    )
    print(f"trained a sentiment field on {report.n_train} rt-polarity pairs ({time.time() - t0:.0f}s);"
          " held-out accuracy per layer:")
    print(report.table())
    chosen = list(TEST_PROMPTS[:prompts])
    outputs: dict[str, list[str]] = {}
    for name, method, sign in DEMO_RUNS:
        if method is None:
            outputs[name] = generate(model, tok, chosen, max_new_tokens=max_new_tokens)
        else:
            with steer(model, field, method=method, strength=sign * DEMO_STRENGTH, layers=steer_layers):
                outputs[name] = generate(model, tok, chosen, max_new_tokens=max_new_tokens)
    scores = {name: vader_compound(texts) for name, texts in outputs.items()}
    print(f"\nsteering layers {list(steer_layers)}, strength ±{DEMO_STRENGTH} x robust norm;"
          " VADER compound in [-1, 1]; greedy decoding, held-out prompts\n")
    print(f"{'method':<10} {'VADER':>6}  continuation")
    for i, prompt in enumerate(chosen):
        print(f"\n[{i + 1}] {prompt}")
        for name in outputs:
            print(f"{name:<10} {scores[name][i]:>+6.2f}  {_clip(outputs[name][i], width)}")
    base = scores["unsteered"]
    print(f"\n{'method':<10} {'mean VADER':>10}  {'moved the requested way':>24}")
    for name, _, sign in DEMO_RUNS:
        mean = sum(scores[name]) / len(scores[name])
        if sign == 0:
            print(f"{name:<10} {mean:>+10.3f}  {'':>24}")
            continue
        moved = sum(1 for s, b in zip(scores[name], base) if (s - b) * sign > 0)
        print(f"{name:<10} {mean:>+10.3f}  {f'{moved}/{len(base)} prompts':>24}")
    print(f"\ntotal {time.time() - t0:.0f}s")
    return scores
