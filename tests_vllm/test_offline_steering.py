"""Offline ``LLM.generate`` with the plugin on the default model (fp32, greedy, eager): each
request gets the tokens :func:`svf.steer_requests` gives its row on the Hugging Face path, in one
batch of fields, a GGUF control vector, a safetensors per-layer vector file, a field's CAA vector
served as a static entry and a field served with a control vector;
unsteered requests get stock vLLM's tokens (the plugin, seeing a vLLM outside its tested
range and no fields, patches nothing there); the prefix cache never mixes steering; the
fields leave the steering op's registry when the engine shuts down."""

from __future__ import annotations

import pytest
import torch
from conftest import OUT_OF_RANGE_VLLM, out_of_range_env, run_engine, save_random_fields
from safetensors.torch import save_file

from svf import (
    ControlVector,
    SteeringField,
    control_vector_from_field,
    load_control_vector,
    steer_requests,
)
from svf.models import load_model
from svf.tokenization import encode_texts, pad_id, pad_left

pytestmark = pytest.mark.slow

PROMPTS = [
    "The weather today is", "My favourite food is", "Once upon a time, in a small village,",
    "The meeting tomorrow will", "I think the new policy", "Dear team, thank you for",
    "The ocean at night", "Yesterday I went to the market and",
    "The best way to learn a language is", "Our new neighbours moved in and",
    "The report on the harbour says", "When the train finally arrived,", "In the garden behind the house",
]
# (entry, strength) per row; None: unsteered. "ab" is a 2-concept softmin field; "cv" a GGUF
# control vector, "plain" a safetensors vector file, "caa" field a's CAA vector, "a+cv" field a
# with the control vector.
ROWS = [("a", 1.5), ("a", -1.25), ("ab", 1.5), ("ab", -1.5), ("c", 1.0), ("c", -1.0),
        None, None, ("cv", 1.0), ("plain", -1.0), ("caa", 2.0), ("a+cv", 1.0), ("cv", -0.75)]
NEW_TOKENS = 16
STORY_PROMPT = "Tell me the long history of the harbour city, from its first days."


def _params(row, max_tokens=NEW_TOKENS) -> dict:
    params = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    if row is not None:
        params["extra_args"] = {"svf": {"field": row[0], "strength": row[1]}}
    return params


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_model_dir):
    folder = tmp_path_factory.mktemp("vllm-offline")
    paths = save_random_fields(folder, 30, 576, {
        "a": (0, range(12, 22), (16, 18, 20)), "b": (1, range(12, 22), (16, 18, 20)),
        "c": (2, range(10, 20), (12, 15)),
    })
    g = torch.Generator().manual_seed(5)
    # vectors of norm ~60 (2.5 sqrt(576)): at strength 1 a push of two to three times the
    # hidden states' own norm, as far as the fields' rows move
    ControlVector({i: 2.5 * torch.randn(576, generator=g) for i in (14, 16, 17)},
                  model_hint="llama").save(folder / "cv.gguf")
    save_file({str(i): 2.5 * torch.randn(576, generator=g) for i in (13, 19, 22)},
              folder / "plain.safetensors")
    served = {"a": paths["a"], "ab": [paths["a"], paths["b"]], "c": paths["c"],
              "cv": {"vector": str(folder / "cv.gguf")},
              "plain": {"vector": str(folder / "plain.safetensors")},
              "caa": {"paths": [paths["a"]], "method": "caa"},
              "a+cv": {"paths": [paths["a"]], "vector": str(folder / "cv.gguf")}}
    model, tok = load_model()
    ids = [list(x) for x in encode_texts(tok, PROMPTS)]
    story_ids = list(encode_texts(tok, [STORY_PROMPT])[0])
    engine = {"model": str(default_model_dir), "dtype": "float32", "enforce_eager": True,
              "max_model_len": 512, "max_num_seqs": 16, "seed": 0}
    steered = run_engine(folder, {**engine, "additional_config": {"svf": {"fields": served}}}, [
        [{"prompt_token_ids": p, "params": _params(r)} for p, r in zip(ids, ROWS)],
        [{"prompt_token_ids": story_ids, "params": _params(("a", 7.5), 140)}],
    ], name="steered")
    assert "batches" in steered and "error" not in steered["batches"][0], steered.get("log", "")[-3000:]
    # The steered story, now the prompt of an unsteered request: a long prefix whose KV blocks
    # were computed under steering (all but the first prompt tokens); an unsalted prefix cache
    # would serve them to this request.
    follow = story_ids + steered["batches"][1]["token_ids"][0]
    bad = [{"field": "zz"}, {"field": "a", "strength": "strong"}, "{not json", {"field": "a", "beta": 1}]
    steered_follow = run_engine(folder, {**engine, "additional_config": {"svf": {"fields": served}}}, [
        [{"prompt_token_ids": story_ids, "params": _params(("a", 7.5), 140)}],
        [{"prompt_token_ids": follow, "params": _params(None, 32)}],
        *[[{"prompt_token_ids": ids[0], "params": {**_params(None), "extra_args": {"svf": b}}}]
          for b in bad],
        [{"prompt_token_ids": ids[0], "params": _params(ROWS[0])}],
    ], name="steered-follow")
    plain = run_engine(folder, engine, [
        [{"prompt_token_ids": p, "params": _params(None)} for p in ids],
        [{"prompt_token_ids": follow, "params": _params(None, 32)}],
    ], name="plain", env=out_of_range_env())
    return {"model": model, "tok": tok, "ids": ids, "served": served, "paths": paths, "steered": steered,
            "steered_follow": steered_follow, "plain": plain}


def _hf_tokens(model, tok, ids, served, paths) -> list[list[int]]:
    """The rows on the HF path, each entry built as a user of the library builds it."""
    field = {name: SteeringField.load(paths[name]) for name in ("a", "b", "c")}
    cv = load_control_vector(served["cv"]["vector"])
    fields = {"a": field["a"], "ab": [field["a"], field["b"]], "c": field["c"], "cv": cv,
              "plain": load_control_vector(served["plain"]["vector"]),
              "caa": control_vector_from_field(field["a"], method="caa", strength=1.0),
              "a+cv": [field["a"], cv]}
    input_ids, mask = pad_left([torch.tensor(x) for x in ids], pad_id(tok))
    model.generation_config.eos_token_id = None
    with steer_requests(model, fields) as batch:
        out = batch.generate(input_ids=input_ids, attention_mask=mask,
                             fields=[r[0] if r else None for r in ROWS],
                             strengths=[r[1] if r else 0.0 for r in ROWS],
                             max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[:, input_ids.shape[1]:].tolist()


def test_rows_match_the_hf_path(setup):
    hf = _hf_tokens(setup["model"], setup["tok"], setup["ids"], setup["served"], setup["paths"])
    vllm = setup["steered"]["batches"][0]["token_ids"]
    plain = setup["plain"]["batches"][0]["token_ids"]
    for r, row in enumerate(ROWS):
        assert vllm[r] == hf[r], f"row {r} ({row}): vLLM {vllm[r]} vs HF {hf[r]}"
        if row is not None:  # the comparison means something: steering changed the text
            assert vllm[r] != plain[r], f"row {r} ({row}) is steered but equals unsteered"


def test_unsteered_rows_equal_unsteered_vllm(setup):
    vllm = setup["steered"]["batches"][0]["token_ids"]
    plain = setup["plain"]["batches"][0]["token_ids"]
    for r, row in enumerate(ROWS):
        if row is None:
            assert vllm[r] == plain[r]


def test_prefix_cache_never_serves_steered_kv_to_an_unsteered_request(setup):
    follow = setup["steered_follow"]["batches"][1]
    plain = setup["plain"]["batches"][1]
    assert follow["token_ids"][0] == plain["token_ids"][0]
    assert plain["cached"] == [0] and follow["cached"] == [0], "the steered blocks were reused"


def test_bad_requests_fail_with_their_problem_and_the_engine_goes_on(setup):
    batches = setup["steered_follow"]["batches"]
    errors = [b.get("error", "") for b in batches[2:6]]
    assert ("unknown field 'zz' in extra_args['svf']['field']; served fields: "
            f"{sorted(setup['served'])}") in errors[0]
    assert "extra_args['svf']['strength'] must be a number, got 'strong'" in errors[1]
    assert "extra_args['svf'] is text but not JSON" in errors[2]
    assert "unknown steering keys" in errors[3] and "beta" in errors[3]
    assert batches[6]["token_ids"][0] == setup["steered"]["batches"][0]["token_ids"][0]


def test_out_of_range_vllm_without_fields_is_stock_vllm(setup):
    plain = setup["plain"]
    assert plain["svf_hooks"] == [] and setup["steered"]["svf_hooks"], "hooks where not expected"
    lines = [line for line in plain["log"].splitlines() if line.startswith("svf:")]
    assert len(lines) == 1 and f"vLLM {OUT_OF_RANGE_VLLM} is outside" in lines[0], lines
    assert "installs nothing" in lines[0]


def test_fields_leave_the_registry_when_the_engine_shuts_down(setup):
    for run in ("steered", "steered_follow"):
        # layers 12, 15 (c); 16, 18, 20 (a, ab, caa); 14, 16, 17 (cv); 13, 19, 22 (plain)
        assert setup[run]["svf_tables"] == 10, run
        assert setup[run]["svf_tables_after_shutdown"] == 0, run
