"""End to end on the default model (SmolLM2-135M-Instruct): training quality and steering.

One sentiment field is trained per test session with the demo's settings (chosen on
validation prompts); the steering test reads the held-out test prompts once.
"""

import pytest
import torch

from svf.cli.demo import DEMO_FRACTIONS, DEMO_STEER_LAYERS, DEMO_STRENGTH, DEMO_TRAIN_LAYERS
from svf.data import TEST_PROMPTS, sentiment_pairs
from svf.eval.judges import vader_compound
from svf.generation import generate
from svf.models import load_model
from svf.steering import steer
from svf.training import TrainConfig, train_field

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_model()


@pytest.fixture(scope="module")
def sentiment(default_model):
    model, tok = default_model
    return train_field(
        model, tok, sentiment_pairs(300, seed=0), concept="sentiment",
        train_layers=DEMO_TRAIN_LAYERS, steer_layers=DEMO_STEER_LAYERS,
        config=TrainConfig(seed=0, fractions=DEMO_FRACTIONS), progress=False,
    )


def test_scorer_is_not_undertrained_and_beats_the_linear_baseline_on_average(sentiment):
    _, report = sentiment
    assert [r["layer"] for r in report.per_layer] == list(DEMO_TRAIN_LAYERS)
    assert report.undertrained_layers == [], report.table()  # within test noise of CAA everywhere

    def mean(key: str) -> float:
        return sum(r[key] for r in report.per_layer) / len(report.per_layer)

    assert mean("scorer_acc") > mean("linear_acc"), report.table()
    assert max(r["scorer_acc"] for r in report.per_layer) > 0.7, report.table()


def test_svf_moves_vader_in_the_requested_direction(default_model, sentiment):
    model, tok = default_model
    field, _ = sentiment
    prompts = TEST_PROMPTS[:12]
    assert len(prompts) >= 10
    means = {}
    for sign in (0, +1, -1):
        if sign == 0:
            texts = generate(model, tok, prompts, max_new_tokens=32)
        else:
            with steer(model, field, strength=sign * DEMO_STRENGTH, layers=DEMO_STEER_LAYERS):
                texts = generate(model, tok, prompts, max_new_tokens=32)
        means[sign] = sum(vader_compound(texts)) / len(texts)
    assert means[+1] > means[0] > means[-1], means


def test_round_trip_on_the_default_model(default_model, sentiment, tmp_path):
    from svf.steering_field import SteeringField

    model, _ = default_model
    field, _ = sentiment
    loaded = SteeringField.load(field.save(tmp_path / "f"), model)
    for layer in DEMO_STEER_LAYERS:
        a, b = field.scorer.fold(layer), loaded.scorer.fold(layer)
        assert torch.equal(a.A, b.A) and torch.equal(a.c, b.c)
