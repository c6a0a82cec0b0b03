"""The library on other decoder families: tiny random Gemma-3 (sliding-window and global
layers, query-key norm, embeddings scaled by sqrt(d)) and Qwen-2 (attention biases) models,
with Llama for comparison.

Per family: a field trains, ``svf.steer`` changes ``generate`` and its undo is exact, the
steered positions are the last prompt token then every new one (also past Gemma's sliding
window, where the cache of a sliding layer holds fewer tokens than were seen), batch steering
gives each row its solo tokens, and the steered model compiles to eager's tokens.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_field, random_prompt_batch, tiny_model
from test_batch_steering import REQUESTS, STRENGTHS, _alone, _fields
from test_compile_steering import STATIC, _compile_config
from test_undo_isolation import Snapshot

import svf
from svf import ContrastivePair, TrainConfig
from svf.hf import decoder_layers
from svf_kernels import FusedSteeringField

FAMILIES = ["gemma3", "qwen2", "llama"]
GREEDY = {"max_new_tokens": 8, "do_sample": False}
#: Longer than the tiny Gemma's sliding window (8 tokens).
PROMPTS = ["the weather today was not what anyone had hoped", "a movie", "my friend said that"]


@pytest.fixture(params=FAMILIES)
def family(request, char_tok):
    """(family name, tiny model, the char tokenizer)."""
    return request.param, tiny_model(request.param, vocab_size=len(char_tok)), char_tok


@pytest.fixture(scope="module")
def trained(char_tok):
    """Per family: a tiny model and a field trained on it (two epochs, layers 1-2)."""
    words = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk"]
    pairs = [ContrastivePair(f"a lovely {w} {i}", f"an awful {w} {i}") for i, w in enumerate(words * 2)]
    out = {}
    for kind in FAMILIES:
        model = tiny_model(kind, vocab_size=len(char_tok))
        field, report = svf.train_field(model, char_tok, pairs, concept="mood", train_layers=[1, 2],
                                        config=TrainConfig(r=8, de=3, m=12, max_epochs=2, seed=0),
                                        progress=False)
        out[kind] = (model, field, report)
    return out


def _generate(model, tok, prompts=PROMPTS, **kw) -> torch.Tensor:
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, **GREEDY, **kw)
    return out[:, enc["input_ids"].shape[1]:]


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_field_trains_and_steers_generate_with_exact_undo(trained, char_tok, kind):
    model, field, report = trained[kind]
    assert [r["layer"] for r in report.per_layer] == [1, 2]
    assert field.num_layers == model.config.num_hidden_layers and tuple(field.steer_layers) == (1, 2)
    before = _generate(model, char_tok)
    snap = Snapshot(model)
    with svf.steer(model, field, strength=8.0):
        steered = _generate(model, char_tok)
        text = svf.generate(model, char_tok, PROMPTS, max_new_tokens=8, chat=False)
    assert not torch.equal(steered, before)
    assert text == char_tok.batch_decode(steered, skip_special_tokens=True)
    snap.assert_same()
    assert torch.equal(_generate(model, char_tok), before)


def test_attach_detach_leaves_the_model_exactly_as_it_was(family):
    _, model, tok = family
    field = random_field(model, steer_layers=(1, 2), seed=3)
    plain = _generate(model, tok)  # lazy HF state exists before the snapshot
    snap = Snapshot(model)
    s = svf.steer(model, field, strength=4.0).attach()
    try:
        assert isinstance(decoder_layers(model)[1], FusedSteeringField)
        steered = _generate(model, tok)
    finally:
        s.detach()
    assert not torch.equal(steered, plain)
    snap.assert_same()
    assert torch.equal(_generate(model, tok), plain)


def test_steered_positions_are_the_last_prompt_token_then_each_new_one(family):
    """Steering reads the last prompt token, then each new token, and steers the same tokens
    with and without a KV cache: past Gemma's sliding window too (the cache of a sliding layer
    holds only the window)."""
    _, model, tok = family
    field = random_field(model, steer_layers=(1, 2), seed=5)
    ids = tok([PROMPTS[0]], return_tensors="pt")["input_ids"]
    P, n = ids.shape[1], 6
    assert P > 8
    runs = {}
    for use_cache in (True, False):
        with svf.steer(model, field, strength=8.0, record_scores=True) as s, torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 do_sample=False, use_cache=use_cache)
        runs[use_cache] = out, [(row, t) for row, t, _ in s.scores_by_position()]
    # recorded at the first steered layer, once per steered position of row 0 and forward pass
    assert runs[True][1] == [(0, t) for t in range(P - 1, P + n - 1)]
    # without a cache each pass reads the whole text again: the same positions, repeated
    assert runs[False][1] == [(0, t) for k in range(1, n + 1) for t in range(P - 1, P - 1 + k)]
    assert torch.equal(runs[True][0], runs[False][0])
    assert not torch.equal(runs[True][0], model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                         max_new_tokens=n, do_sample=False))


@torch.no_grad()
def test_batch_steering_rows_equal_their_solo_runs(family):
    kind, model, _ = family
    fields = _fields(model)
    prompts, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4], vocab=model.config.vocab_size)
    kw = {"max_new_tokens": 10, "do_sample": False}
    with svf.steer_requests(model, fields) as batch:
        out = batch.generate(input_ids=ids, attention_mask=mask, fields=REQUESTS, strengths=STRENGTHS, **kw)
    new = out[:, ids.shape[1]:]
    moved = 0
    for r, (name, s) in enumerate(zip(REQUESTS, STRENGTHS)):
        alone = _alone(model, prompts[r], None if name is None else fields[name], s, **kw)
        assert torch.equal(new[r], alone), f"{kind}: row {r} ({name}) differs from its solo run"
        if name is not None:
            moved += not torch.equal(alone, _alone(model, prompts[r], None, 0.0, **kw))
    assert moved >= 3, f"{kind}: steering should change most steered rows' tokens"


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@torch.no_grad()
def test_steered_model_compiles_fullgraph_and_matches_eager(family):
    kind, model, _ = family
    _, ids, mask = random_prompt_batch([5, 9, 7, 12], seed=6, vocab=model.config.vocab_size)
    config = _compile_config("aot_eager")
    plain = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
    with svf.steer_requests(model, _fields(model), positions="last") as batch:
        batch.set_requests(REQUESTS[:4], STRENGTHS[:4])
        eager = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        compiled = model.generate(input_ids=ids, attention_mask=mask, compile_config=config, **STATIC)
    assert torch.equal(compiled, eager), kind
    assert not torch._dynamo.utils.counters["graph_break"], kind
    assert not torch.equal(plain, eager), f"{kind}: steering should change the tokens"


@torch.no_grad()
def test_static_cache_default_positions_match_dynamic_cache(family):
    """Eager static-cache decoding steers the positions the dynamic cache does (Gemma's
    generate then passes the attention masks as a dict, one per attention kind)."""
    kind, model, _ = family
    _, ids, mask = random_prompt_batch([5, 9, 14, 12], seed=8, vocab=model.config.vocab_size)
    with svf.steer_requests(model, _fields(model)) as batch:
        batch.set_requests(REQUESTS[:4], STRENGTHS[:4])
        static = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True,
                                **{**STATIC, "max_new_tokens": 12})
        dynamic = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(static, dynamic), kind
