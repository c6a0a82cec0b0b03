"""Steered decoding with a static KV cache under ``torch.compile(fullgraph=True)``.

``positions="last"`` leaves no host logic in the steering path, so transformers' compiled
decode step (``cache_implementation="static"`` + ``CompileConfig(fullgraph=True)``) traces
the whole model with the steering ops inside: any graph break would raise. The compiled
tokens must equal eager ones, and new requests (same batch size) must reuse the graph.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_field, random_prompt_batch, tiny_model
from test_batch_steering import REQUESTS, STRENGTHS, _fields
from transformers import CompileConfig

import svf
import svf_kernels

STATIC = {"max_new_tokens": 8, "do_sample": False, "cache_implementation": "static"}


def _compile_config(backend: str) -> CompileConfig:
    config = CompileConfig(fullgraph=True, backend=backend, mode=None)
    config._compile_all_devices = True  # transformers compiles only on GPUs unless told
    return config


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@torch.no_grad()
def test_batch_steering_compiles_fullgraph_and_matches_eager():
    model = tiny_model("llama")
    _, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4], seed=6)
    config = _compile_config("aot_eager")
    with svf.steer_requests(model, _fields(model), positions="last") as batch:
        batch.set_requests(REQUESTS, STRENGTHS)
        eager = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        compiled = model.generate(input_ids=ids, attention_mask=mask, compile_config=config, **STATIC)
        assert torch.equal(compiled, eager)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
        # other fields and strengths, same batch size: same graph, still eager's tokens
        batch.set_requests(list(reversed(REQUESTS)), [2 * s for s in STRENGTHS])
        compiled2 = model.generate(input_ids=ids, attention_mask=mask, compile_config=config, **STATIC)
        eager2 = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        assert torch.equal(compiled2, eager2) and not torch.equal(compiled2, compiled)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    # ...and the steering really acted: unsteered static decoding gives other tokens
    plain = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
    assert not torch.equal(plain, eager)


@torch.no_grad()
def test_batch_steering_with_B_and_targets_compiles_fullgraph(monkeypatch):
    """The same compiled decode with every layer's FieldTable given a direction matrix B and
    per-field targets: the per-row targets are gathered and the gates computed on the device,
    so the whole model still traces as one graph, and the tokens equal eager ones."""
    from svf import field_packing
    from svf_kernels import FieldTable

    plain_table = field_packing.field_table

    def table_with_options(entries, layer, **kw):
        t = plain_table(entries, layer, **kw)
        gen = torch.Generator().manual_seed(layer)
        B = t.A * (0.5 + torch.rand(t.A.shape[:-1], generator=gen)).unsqueeze(-1)
        targets = torch.tensor([0.0, float("nan"), -0.5])[: t.num_fields]
        return FieldTable(t.A, t.c, t.w2, t.b2, tau=t.tau, normalize=t.normalize, eps=t.eps,
                          B=B, targets=targets, band=2.0)

    monkeypatch.setattr(field_packing, "field_table", table_with_options)
    model = tiny_model("llama")
    _, ids, mask = random_prompt_batch([5, 9, 7, 12, 6, 9, 10, 4], seed=6)
    config = _compile_config("aot_eager")
    with svf.steer_requests(model, _fields(model), positions="last") as batch:
        wrapped = [m for m in model.modules() if isinstance(m, svf_kernels.FusedSteeringField)]
        assert wrapped and all(m.field.B is not None and m.field.targets is not None
                               for m in wrapped)
        batch.set_requests(REQUESTS, [3 * s for s in STRENGTHS])
        eager = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        compiled = model.generate(input_ids=ids, attention_mask=mask, compile_config=config, **STATIC)
        assert torch.equal(compiled, eager)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    plain = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
    assert not torch.equal(plain, eager)


@torch.no_grad()
def test_single_field_steering_compiles_fullgraph():
    model = tiny_model("gpt2")
    field = random_field(model, steer_layers=(1, 2), seed=4)
    _, ids, mask = random_prompt_batch([4, 7, 6], seed=7)
    with svf.steer(model, field, strength=1.0, positions="last"):
        eager = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        compiled = model.generate(input_ids=ids, attention_mask=mask,
                                  compile_config=_compile_config("aot_eager"), **STATIC)
    assert torch.equal(compiled, eager)
    assert not torch._dynamo.utils.counters["graph_break"]


@torch.no_grad()
def test_static_cache_default_positions_match_dynamic_cache():
    """Eager static-cache decoding steers the same positions as the dynamic cache."""
    model = tiny_model("llama")
    _, ids, mask = random_prompt_batch([5, 9, 7, 12], seed=8)
    with svf.steer_requests(model, _fields(model)) as batch:
        batch.set_requests(REQUESTS[:4], STRENGTHS[:4])
        static = model.generate(input_ids=ids, attention_mask=mask, disable_compile=True, **STATIC)
        dynamic = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(static, dynamic)
