"""A steered model can be moved and cast like any model: ``.float()``, ``.double()``,
``.to(dtype)``, ``.half()`` and ``.to(device)`` while a field is attached; it still steers
afterwards, exactly as a model cast before steering, and leaving the context unwraps every layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_field, tiny_model

from svf import steer
from svf.hf import decoder_layers
from svf_kernels import FusedSteeringField, PackedField, StaticVector

CASTS = {
    "float": lambda m: m.float(),
    "double": lambda m: m.double(),
    "to(float64)": lambda m: m.to(torch.float64),
    "half": lambda m: m.half(),
    "to(bfloat16)": lambda m: m.to(torch.bfloat16),
    "to(cpu)": lambda m: m.to("cpu"),
}
# Expected dtype of the model's parameters after each cast.
DTYPES = {"float": torch.float32, "double": torch.float64, "to(float64)": torch.float64,
          "half": torch.float16, "to(bfloat16)": torch.bfloat16, "to(cpu)": torch.float32}
IDS = torch.tensor([[5, 17, 3, 44, 9, 12]])


@pytest.fixture(scope="module")
def base():
    model = tiny_model("llama")
    return model, random_field(model, steer_layers=(1, 2), seed=4)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("method", ["svf", "caa"])
@pytest.mark.parametrize("cast", list(CASTS))
def test_cast_while_steered_steers_as_if_cast_first(base, cast, method):
    model, field = base
    during = copy.deepcopy(model)
    before = CASTS[cast](copy.deepcopy(model))
    unsteered = _logits(before)
    with steer(before, field, strength=2.0, method=method):
        want = _logits(before)
    with steer(during, field, strength=2.0, method=method):
        assert CASTS[cast](during) is during
        assert next(during.parameters()).dtype == DTYPES[cast]
        got = _logits(during)
        wrappers = [m for m in decoder_layers(during) if isinstance(m, FusedSteeringField)]
        assert len(wrappers) == 2
    assert not (got == unsteered).all(), "the cast model no longer steers"
    assert torch.equal(got, want)
    assert not any(isinstance(m, FusedSteeringField) for m in during.modules())
    assert torch.equal(_logits(during), unsteered)


@pytest.mark.parametrize("cast", list(CASTS))
def test_field_buffers_follow_the_device_and_keep_float32_under_half_casts(base, cast):
    model, field = base
    model = copy.deepcopy(model)
    with steer(model, field, strength=1.0) as steering:
        CASTS[cast](model)
        packed = steering.layer_fields[1]
        assert isinstance(packed, PackedField)
        want = torch.float64 if DTYPES[cast] == torch.float64 else torch.float32
        assert {b.dtype for b in packed.buffers()} == {want}


def test_static_vector_buffer_keeps_float32_under_half():
    vector = StaticVector(torch.randn(7))
    assert vector.half().vector.dtype == torch.float32
    assert vector.to(torch.bfloat16).vector.dtype == torch.float32
    assert vector.double().vector.dtype == torch.float64
    assert vector.half().vector.dtype == torch.float32  # from float64 too
