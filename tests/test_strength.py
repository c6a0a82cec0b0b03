"""What strength means (docs/STEERING.md): ``strength`` is relative and per layer, the
evaluation's ``total_strength`` is a total split over a method's layers, and the defaults of
the library, the training config, the CLI and the README agree."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from helpers import random_field, tiny_model

import svf
from svf.cli.commands import build_parser
from svf.eval.methods import build_methods, steer_by_method
from svf.hf import decoder_layers
from svf.steering_field import DEFAULT_STRENGTH, SteeringField, strength_scale
from svf.training import TrainConfig

LAYERS = (1, 2, 3)
README = Path(__file__).resolve().parents[1] / "README.md"


class Displacements:
    """The L2 displacement each steered layer applies to the last position, per forward pass."""

    def __init__(self, model) -> None:
        self.by_layer: dict[int, torch.Tensor] = {}
        for i, wrapper in enumerate(decoder_layers(model)):
            if hasattr(wrapper, "layer"):  # a FusedSteeringField
                wrapper.layer.register_forward_hook(self._raw(i))
                wrapper.register_forward_hook(self._moved(i))

    def _raw(self, i: int):
        def hook(mod, args, out):
            self.by_layer[i] = (out[0] if isinstance(out, tuple) else out)[:, -1].clone()
        return hook

    def _moved(self, i: int):
        def hook(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out)[:, -1]
            self.by_layer[i] = (h - self.by_layer[i]).norm(dim=-1)
        return hook


def _measure(model, ctx) -> dict[int, torch.Tensor]:
    ids = torch.randint(2, 99, (3, 7), generator=torch.Generator().manual_seed(0))
    with ctx, torch.no_grad():
        rec = Displacements(model)
        model(input_ids=ids)
    return rec.by_layer


@pytest.mark.parametrize("s", [0.15, -0.4])
def test_strength_moves_every_layer_by_strength_times_its_mean_norm(s):
    model = tiny_model("llama")
    field = random_field(model, steer_layers=LAYERS)
    moved = _measure(model, svf.steer(model, field, strength=s))
    assert sorted(moved) == list(LAYERS)
    for i in LAYERS:  # per layer: not shared out over the three layers
        want = abs(s) * field.mean_norm(i)
        torch.testing.assert_close(moved[i], torch.full_like(moved[i], want), rtol=1e-5, atol=0)


def test_eval_total_strength_is_split_over_the_layers():
    model = tiny_model("llama")
    field = random_field(model, steer_layers=LAYERS)
    method = build_methods(field, LAYERS, LAYERS[0])["svf-shared"]
    scale = strength_scale([field], LAYERS)
    assert scale == pytest.approx(sum(field.mean_norm(i) for i in LAYERS) / len(LAYERS))
    T = 0.3
    moved = _measure(model, steer_by_method(model, method, T, scale))
    assert sorted(moved) == list(LAYERS)
    for i in LAYERS:
        torch.testing.assert_close(moved[i], torch.full_like(moved[i], T * scale / len(LAYERS)),
                                   rtol=1e-5, atol=0)
    total = sum(moved.values())
    torch.testing.assert_close(total, torch.full_like(total, T * scale), rtol=1e-5, atol=0)


def test_defaults_agree_with_the_readme():
    cli = build_parser().parse_args(["generate", "--field", "f", "--prompt", "p"]).strength
    field_default = next(f.default for f in dataclasses.fields(SteeringField)
                         if f.name == "default_strength")
    readme = re.search(r"steer\(model, field, strength=([0-9.]+)\)", README.read_text())
    assert readme is not None, "the README's quick start should steer with strength=..."
    assert cli == field_default == TrainConfig().default_strength == DEFAULT_STRENGTH
    assert float(readme.group(1)) == DEFAULT_STRENGTH


def test_steer_without_strength_uses_the_field_default_and_a_saved_value_is_kept(tmp_path):
    model = tiny_model("llama")
    field = random_field(model, steer_layers=(1,))
    field.default_strength = 0.5  # a value other than the library default, stored on save
    loaded = SteeringField.load(field.save(tmp_path / "f"), model=model)
    assert loaded.default_strength == 0.5
    assert svf.steer(model, loaded).alphas == {1: pytest.approx(0.5 * loaded.mean_norm(1))}
