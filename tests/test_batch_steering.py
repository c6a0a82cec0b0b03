"""Per-request steering in one batch (``svf.steer_requests``), end to end on tiny HF models.

The acceptance check: a left-padded batch of 8 rows, 3 different fields (one of them two
concepts by softmin), different strengths and 2 unsteered rows gives, under greedy decoding,
exactly the tokens each row gives alone with its own field through ``svf.steer`` (a separate
code path: the one-field op), and the unsteered rows exactly the unsteered model's tokens.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_field, random_prompt_batch, tiny_model

import svf
from svf import SVFArgumentError
from svf.hf import decoder_layers

REQUESTS = ["a", None, "b", "ac", "a", "b", None, "ac"]
STRENGTHS = [0.8, 0.0, 1.2, 0.5, -0.7, 0.9, 0.3, 1.0]
GREEDY = {"max_new_tokens": 10, "do_sample": False}


def _fields(model):
    fa = random_field(model, steer_layers=(1, 2), seed=1, concept="a")
    fb = random_field(model, steer_layers=(2, 3), seed=2, concept="b")  # other layers
    fc = random_field(model, steer_layers=(1, 2), seed=3, concept="c", m=7)  # other width
    return {"a": fa, "b": fb, "ac": [fa, fc]}


def _alone(model, prompt, field, strength, **kw):
    x = prompt[None]
    if field is None:
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    else:
        with svf.steer(model, field, strength=strength):
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    return out[0, x.shape[1]:]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@torch.no_grad()
def test_mixed_batch_equals_each_row_alone(kind):
    model = tiny_model(kind)
    fields = _fields(model)
    prompts, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4])
    with svf.steer_requests(model, fields) as batch:
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=REQUESTS, strengths=STRENGTHS,
                             **GREEDY)
    new = out[:, ids.shape[1]:]
    moved = 0
    for r, (name, s) in enumerate(zip(REQUESTS, STRENGTHS)):
        alone = _alone(model, prompts[r], None if name is None else fields[name], s, **GREEDY)
        assert torch.equal(new[r], alone), f"row {r} ({name}) differs from its solo run"
        if name is not None:
            moved += not torch.equal(alone, _alone(model, prompts[r], None, 0.0, **GREEDY))
    assert moved >= 4, "steering should change most steered rows' tokens (else the test proves little)"


@torch.no_grad()
def test_positions_last_matches_default_on_left_padded_batches():
    model = tiny_model("llama")
    fields = _fields(model)
    _, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4], seed=1)
    outs = []
    for positions in ("default", "last"):
        with svf.steer_requests(model, fields, positions=positions) as batch:
            outs.append(batch.generate(input_ids=ids, attention_mask=mask, fields=REQUESTS,
                                       strengths=STRENGTHS, **GREEDY))
    assert torch.equal(outs[0], outs[1])


@torch.no_grad()
def test_sampling_unsteered_rows_follow_the_unsteered_batch():
    """Sampling draws the same random numbers for a batch whatever its fields: rows with no
    field reproduce the unsteered batch exactly, steered rows are moved."""
    model = tiny_model("llama")
    fields = _fields(model)
    _, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4], seed=2)
    kw = {"max_new_tokens": 10, "do_sample": True, "top_k": 0, "temperature": 0.5}
    torch.manual_seed(0)
    base = model.generate(input_ids=ids, attention_mask=mask, **kw)
    with svf.steer_requests(model, fields) as batch:
        torch.manual_seed(0)
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=REQUESTS,
                             strengths=[3 * s for s in STRENGTHS], **kw)
    for r, name in enumerate(REQUESTS):
        if name is None:
            assert torch.equal(out[r], base[r])
    moved = sum(not torch.equal(out[r], base[r]) for r, n in enumerate(REQUESTS) if n)
    print("steered rows moved:", moved)
    assert moved >= 3


@torch.no_grad()
def test_requests_update_in_place_and_batch_size_may_change():
    model = tiny_model("llama")
    batch = svf.steer_requests(model, _fields(model)).attach()
    try:
        batch.set_requests(REQUESTS, STRENGTHS)
        wrapper = decoder_layers(model)[2]
        ids_before, alpha_before = wrapper.field_ids, wrapper.alpha
        batch.set_requests(list(reversed(REQUESTS)), 0.5)
        assert wrapper.field_ids is ids_before and wrapper.alpha is alpha_before  # same tensors
        # layer 2 is steered by every field: local ids follow the global order a, b, ac
        assert wrapper.field_ids.tolist() == [2, -1, 1, 0, 2, 1, -1, 0]
        _, ids, mask = random_prompt_batch([4, 6, 5], seed=3)
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=["b", None, "a"], strengths=1.0,
                             **GREEDY)
        assert out.shape == (3, ids.shape[1] + GREEDY["max_new_tokens"])
        assert decoder_layers(model)[2].field_ids.tolist() == [1, -1, 0]
        # layer 3 is steered by "b" only: "a" rows get -1 there
        assert decoder_layers(model)[3].field_ids.tolist() == [0, -1, -1]
    finally:
        batch.detach()


@torch.no_grad()
def test_detach_restores_the_module_tree():
    model = tiny_model("gpt2")
    before = [id(m) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with svf.steer_requests(model, _fields(model)) as batch:
        _, ids, mask = random_prompt_batch([3, 5], seed=4)
        batch.generate(input_ids=ids, attention_mask=mask, fields=["a", "b"], strengths=1.0, **GREEDY)
    assert [id(m) for m in model.modules()] == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.transformer._forward_pre_hooks


def test_bad_requests_name_the_problem():
    model = tiny_model("llama")
    batch = svf.steer_requests(model, _fields(model))
    with pytest.raises(SVFArgumentError, match="unknown fields"):
        batch.set_requests(["a", "nope"], 1.0)
    with pytest.raises(SVFArgumentError, match="strengths has 1 entries"):
        batch.set_requests(["a", None], [1.0])
    with pytest.raises(SVFArgumentError, match="finite"):
        batch.set_requests(["a"], [float("nan")])
    with pytest.raises(SVFArgumentError, match=r"strengths\[0\] must be a number"):
        batch.set_requests(["a"], [True])
    with pytest.raises(SVFArgumentError, match="strengths must be a number or a sequence"):
        batch.set_requests(["a"], None)
    with pytest.raises(SVFArgumentError, match="sequence of field names"):
        batch.set_requests("a", 1.0)
    with pytest.raises(SVFArgumentError, match="attach"):
        batch.generate(input_ids=torch.ones(1, 2, dtype=torch.long), fields=["a"], strengths=1.0)
    with pytest.raises(SVFArgumentError, match="non-empty mapping"):
        svf.steer_requests(model, {})
    with pytest.raises(SVFArgumentError, match="outside the training layers"):
        svf.steer_requests(model, _fields(model), layers=[7])
    with pytest.raises(SVFArgumentError, match="refresh must be 1"):
        svf.steer_requests(model, _fields(model), positions="last", refresh=2)


@torch.no_grad()
def test_wrong_batch_size_is_named():
    model = tiny_model("llama")
    with svf.steer_requests(model, _fields(model)) as batch:
        batch.set_requests(["a", "b"], 1.0)
        _, ids, mask = random_prompt_batch([3, 4, 5], seed=5)
        with pytest.raises(SVFArgumentError, match="rows but the batch has 3"):
            model.generate(input_ids=ids, attention_mask=mask, **GREEDY)
