"""The steered model behaves the same however vLLM runs it: compiled (Dynamo, Inductor) as in
eager mode on the default model, and split over two tensor-parallel ranks as on one, on a
small random Llama whose heads divide by two (the default model's 9 do not)."""

from __future__ import annotations

import pytest
import torch
from conftest import engine_env, run_engine, save_random_fields
from transformers import LlamaConfig, LlamaForCausalLM

from svf.models import load_model
from svf.tokenization import encode_texts

pytestmark = pytest.mark.slow

PROMPTS = ["The weather today is", "Dear team, thank you for", "The ocean at night",
           "Once upon a time, in a small village,"]
ROWS = [("a", 1.5), ("ab", -1.5), None, ("a", -1.25)]


def _batch(ids: list[list[int]], rows, max_tokens: int = 16) -> list[dict]:
    batch = []
    for p, row in zip(ids, rows):
        params = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
        if row is not None:
            params["extra_args"] = {"svf": {"field": row[0], "strength": row[1]}}
        batch.append({"prompt_token_ids": p, "params": params})
    return batch


def test_compiled_equals_eager(tmp_path, default_model_dir):
    paths = save_random_fields(tmp_path, 30, 576, {"a": (0, range(12, 22), (16, 18, 20)),
                                                   "b": (1, range(12, 22), (16, 18, 20))})
    fields = {"a": paths["a"], "ab": [paths["a"], paths["b"]]}
    _, tok = load_model()
    ids = [list(x) for x in encode_texts(tok, PROMPTS)]
    engine = {"model": str(default_model_dir), "dtype": "float32", "max_model_len": 256,
              "seed": 0, "additional_config": {"svf": {"fields": fields}}}
    batches = [_batch(ids, ROWS), _batch(ids, [None] * len(ids))]
    eager = run_engine(tmp_path, {**engine, "enforce_eager": True}, batches, name="eager")
    # A fresh compile cache: the graph is traced (fullgraph, so a graph break would fail) and
    # compiled here, not loaded from an earlier run.
    compiled = run_engine(tmp_path, engine, batches, name="compiled", timeout=900,
                          env=engine_env(VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache")))
    assert "saved AOT compiled function" in compiled["log"], "the engine did not compile the model"
    for b in range(2):
        assert compiled["batches"][b]["token_ids"] == eager["batches"][b]["token_ids"], f"batch {b}"
    steered, plain = eager["batches"]
    assert all(s != p for s, p, r in zip(steered["token_ids"], plain["token_ids"], ROWS) if r)


def _tiny_llama(folder) -> str:
    """A random Llama (4 layers, hidden 128, 4 query and 2 KV heads), fp32 safetensors."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.3,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(folder / "tiny-llama", safe_serialization=True)
    return str(folder / "tiny-llama")


def test_two_ranks_equal_one(tmp_path):
    model_dir = _tiny_llama(tmp_path)
    paths = save_random_fields(tmp_path, 4, 128, {"a": (3, range(4), (1, 2)),
                                                  "b": (4, range(4), (1, 2))})
    fields = {"a": paths["a"], "ab": [paths["a"], paths["b"]]}
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (5, 9, 7, 12)]
    engine = {"model": model_dir, "dtype": "float32", "max_model_len": 128, "seed": 0,
              "enforce_eager": True, "skip_tokenizer_init": True,
              "additional_config": {"svf": {"fields": fields}}}
    rows = [("a", 1.5), ("ab", -1.5), None, ("a", -1.25)]
    batches = [_batch(ids, rows), _batch(ids, [None] * len(ids))]
    one = run_engine(tmp_path, engine, batches, name="tp1")
    two = run_engine(tmp_path, {**engine, "tensor_parallel_size": 2}, batches, name="tp2",
                     env=engine_env(VLLM_CPU_OMP_THREADS_BIND="0|1"))
    assert "world_size=2" in two["log"] or "world size 2" in two["log"], "not two ranks"
    for b in range(2):
        assert two["batches"][b]["token_ids"] == one["batches"][b]["token_ids"], f"batch {b}"
    steered, plain = one["batches"]
    assert all(s != p for s, p, r in zip(steered["token_ids"], plain["token_ids"], rows) if r)
