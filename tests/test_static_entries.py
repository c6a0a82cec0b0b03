"""Static entries beside fields in per-request steering (``svf.steer_requests``, :mod:`svf.table_entries`).

A name may hold a control vector (GGUF or a ``.safetensors`` per-layer vector file, or a field's
CAA vector exported at strength 1.0), or a field with a control vector. Every row goes through
the one field-table launch per layer; end to end on a tiny random Llama, greedy tokens of a mixed
batch equal each row alone through :func:`svf.steer` (a separate code path: the one-field op and
``StaticVector``), and a field with a vector on disjoint layers equals the field and the vector
attached side by side.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_field, random_prompt_batch, tiny_model
from safetensors.torch import save_file

import svf
from svf.artifacts import ArtifactError
from svf.control_vectors import ControlVector, control_vector_from_field, load_control_vector
from svf.table_entries import table_entry
from svf_kernels import SVFArgumentError

D = 64
GREEDY = {"max_new_tokens": 8, "do_sample": False}


def _vector(layers, seed=0, scale=3.0) -> ControlVector:
    g = torch.Generator().manual_seed(seed)
    return ControlVector({i: scale * torch.randn(D, generator=g) for i in layers})


def _generate(model, prompt, *steerings):
    x = prompt[None]
    for s in steerings:
        s.attach()
    try:
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **GREEDY)
    finally:
        for s in reversed(steerings):
            s.detach()
    return out[0, x.shape[1]:]


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")
    field = random_field(model, steer_layers=(1, 2), seed=1, concept="a")
    return model, field


@torch.no_grad()
def test_mixed_batch_of_fields_and_static_entries_equals_each_row_alone(llama, tmp_path):
    model, field = llama
    cv = _vector((1, 3), seed=2)
    save_file({str(i): v for i, v in _vector((2, 3), seed=3).vectors.items()},
              tmp_path / "v.safetensors")
    plain = load_control_vector(tmp_path / "v.safetensors")
    caa = control_vector_from_field(field, method="caa", strength=1.0)
    entries = {"field": field, "cv": cv, "plain": plain, "caa": caa}
    requests = ["cv", "field", None, "plain", "caa", "cv", "caa", "field"]
    strengths = [1.0, 0.8, 0.0, -0.6, 0.9, 0.4, -1.1, -0.5]
    prompts, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4])
    with svf.steer_requests(model, entries) as batch:
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=requests,
                             strengths=strengths, **GREEDY)[:, ids.shape[1]:]
    moved = 0
    for r, (name, s) in enumerate(zip(requests, strengths)):
        if name is None:
            alone = _generate(model, prompts[r])
        elif name == "caa":  # the exported CAA vector steers as the field's CAA at strength s
            alone = _generate(model, prompts[r], svf.steer(model, field, method="caa", strength=s))
        else:
            alone = _generate(model, prompts[r], svf.steer(model, entries[name], strength=s))
        assert torch.equal(out[r], alone), f"row {r} ({name}) differs from its solo run"
        moved += name is not None and not torch.equal(alone, _generate(model, prompts[r]))
    assert moved >= 5, "steering should change most steered rows' tokens"


@torch.no_grad()
def test_a_field_with_a_vector_is_both_side_by_side(llama):
    """Disjoint layers (field 1, 2; vector 3): the entry steers as the field and the vector
    attached together; strength s moves the field by s * its scale and adds s * v."""
    model, field = llama
    cv = _vector((3,), seed=4)
    prompts, ids, mask = random_prompt_batch([6, 9, 4], seed=1)
    strengths = [0.7, -0.9, 1.3]
    entry = table_entry([field, cv])
    assert entry.field_layers == (1, 2) and entry.vector_layers == (3,) and entry.layers == (1, 2, 3)
    with svf.steer_requests(model, {"both": [field, cv]}) as batch:
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=["both"] * 3,
                             strengths=strengths, **GREEDY)[:, ids.shape[1]:]
    for r, s in enumerate(strengths):
        alone = _generate(model, prompts[r], svf.steer(model, field, strength=s),
                          svf.steer(model, cv, strength=s))
        assert torch.equal(out[r], alone), f"row {r}"
        assert not torch.equal(alone, _generate(model, prompts[r], svf.steer(model, field, strength=s)))


def test_a_field_with_a_vector_at_the_same_layer_packs_v_over_the_field_scale():
    """One layer with both parts: the table's vector row is ``v / scale`` with the field's
    strength scale, so ``alpha = s * scale`` adds ``s * v`` (the kernel's sum is checked in
    tests/test_table_vectors.py)."""
    model = tiny_model("llama", layers=2)
    field = random_field(model, steer_layers=(1,), seed=5)
    cv = _vector((1,), seed=6)
    entry = table_entry([field, cv])
    scale = entry.scale(1)
    assert scale == pytest.approx(svf.steering_field.strength_scale([field], 1))
    torch.testing.assert_close(entry.table_vector(1) * scale, cv.vectors[1])
    with svf.steer_requests(model, {"both": [field, cv]}) as batch:
        table = batch.steering.layer_fields[1]
        torch.testing.assert_close(table.vectors[0] * scale, cv.vectors[1])
        assert table.A.abs().sum() > 0


def test_entry_rules_and_errors(llama):
    model, field = llama
    cv = _vector((1, 3))
    assert table_entry(cv).layers == (1, 3) and table_entry(cv).default_strength == 1.0
    assert table_entry([field, cv], layers=[2]).vector_layers == ()  # no vector at layer 2
    zero = ControlVector({1: torch.zeros(D), 3: torch.ones(D)})
    assert table_entry(zero).layers == (3,)  # a zero vector adds nothing: left out
    for bad, words in (([cv], "SteeringFields"), ([field, cv, cv], "at most one"),
                       ("name", "SteeringField"), ([], "non-empty")):
        with pytest.raises(SVFArgumentError, match=words):
            table_entry(bad)
    with pytest.raises(SVFArgumentError, match=r"layers \[2\] have no vector"):
        table_entry(cv, layers=[1, 2])
    with pytest.raises(SVFArgumentError, match="zero: nothing to steer"):
        table_entry(ControlVector({1: torch.zeros(D)}))
    with pytest.raises(SVFArgumentError, match="hidden size 65"):
        table_entry([field, ControlVector({1: torch.ones(D + 1)})])
    with pytest.raises(SVFArgumentError, match="hidden_size 65"):
        svf.steer_requests(model, {"v": ControlVector({1: torch.ones(D + 1)})})
    with pytest.raises(SVFArgumentError, match="steering layers"):
        svf.steer_requests(model, {"v": ControlVector({9: torch.ones(D)})})


def test_a_static_entry_is_never_closed_loop(llama):
    """A target given for every entry gates the fields only: a static row moves as it would
    without one (its zero scorer scores 0, which a target must not gate)."""
    model, field = llama
    cv = _vector((1,), seed=7)
    x = torch.randn(3, D)
    with svf.steer_requests(model, {"cv": cv, "f": field}, target=0.9) as batch:
        table = batch.steering.layer_fields[1]
        assert torch.isnan(table.targets[0]) and not torch.isnan(table.targets[1])
    ids = torch.zeros(3, dtype=torch.long)
    h = x.clone()
    table.apply_(h, torch.full((3,), 0.5), ids)
    torch.testing.assert_close(h, x + 0.5 * cv.vectors[1] / cv.norm(1))


@pytest.mark.parametrize(("tensors", "words"), [
    ({"direction.3": torch.ones(D)}, "not named by a layer index"),
    ({"03": torch.ones(D)}, "leading zeros"),
    ({"3": torch.ones(D, dtype=torch.int32)}, "not floating point"),
    ({"3": torch.ones(2, D)}, "1-D"),
    ({"3": torch.ones(D), "4": torch.ones(D + 1)}, "one hidden size"),
    ({"3": torch.full((D,), float("nan"))}, "non-finite"),
])
def test_bad_safetensors_vector_files_are_refused(tmp_path, tensors, words):
    path = tmp_path / "v.safetensors"
    save_file(tensors, path)
    with pytest.raises(ArtifactError, match=words) as info:
        load_control_vector(path)
    assert str(path) in str(info.value)


def test_safetensors_vector_file_round_trip_and_other_files(tmp_path):
    cv = _vector((0, 2, 5))
    path = tmp_path / "v.safetensors"
    save_file({str(i): v.half() for i, v in cv.vectors.items()}, path, metadata={"model_hint": "llama"})
    back = load_control_vector(path)
    assert back.layers == (0, 2, 5) and back.model_hint == "llama"
    for i in cv.layers:
        assert torch.equal(back.vectors[i], cv.vectors[i].half().float())
    (tmp_path / "v.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match=r"not a GGUF file.*\.safetensors"):
        load_control_vector(tmp_path / "v.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_control_vector(tmp_path / "bad.safetensors")
