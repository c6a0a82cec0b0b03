"""Completion likelihoods: batched == one-by-one direct computation, and steering acts at the
positions generation steers (last prompt token + every completion token)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_field

from svf.eval.likelihood import completion_logprobs
from svf.eval.methods import build_methods, steer_by_method
from svf.generation import format_prompts
from svf.steering_field import strength_scale

PROMPTS = ["hi", "tell me a story about a cat", "ok?"]
COMPLETIONS = ["yes.", "no way at all", "x"]


def _direct(model, tok, prompt: str, completion: str) -> float:
    """Unbatched, no padding, one concatenated sequence."""
    p = tok(format_prompts(tok, [prompt])[0], add_special_tokens=False).input_ids
    c = tok(completion, add_special_tokens=False).input_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return float(torch.stack([lp[len(p) - 1 + k, c[k]] for k in range(len(c))]).mean())


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_batched_equals_direct(tiny, batch_size):
    model, tok = tiny
    got = completion_logprobs(model, tok, PROMPTS, COMPLETIONS, batch_size=batch_size)
    want = torch.tensor([[_direct(model, tok, p, c) for c in COMPLETIONS] for p in PROMPTS])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_steering_acts_where_generation_steers(tiny):
    """Under steering the result equals an independent no-cache computation: the prompt pass,
    then one pass over prompt + completion, which the position tracker recognises as a
    continuation (it steers the last prompt token and every completion token); detaching gives
    back the unsteered numbers exactly."""
    model, tok = tiny
    field = random_field(model)
    methods = build_methods(field, field.steer_layers, field.steer_layers[0])
    scale = strength_scale([field], field.steer_layers)
    prompt, completion = PROMPTS[1], "abcdefgh"
    base = completion_logprobs(model, tok, [prompt], [completion])
    p = tok(format_prompts(tok, [prompt])[0], add_special_tokens=False).input_ids
    c = tok(completion, add_special_tokens=False).input_ids
    with steer_by_method(model, methods["svf-shared"], 0.5, scale):
        steered = completion_logprobs(model, tok, [prompt], [completion])
        with torch.no_grad():
            model(input_ids=torch.tensor([p]))
            lp = model(input_ids=torch.tensor([p + c])).logits[0].float().log_softmax(-1)
    want = torch.stack([lp[len(p) - 1 + k, c[k]] for k in range(len(c))]).mean()
    torch.testing.assert_close(steered[0, 0], want, atol=2e-5, rtol=1e-5)
    assert abs(float(steered - base)) > 1e-3
    assert torch.equal(base, completion_logprobs(model, tok, [prompt], [completion]))


def test_methods_split_total_displacement(tiny):
    """A 2-layer method moves each layer by half the total; base and total strength 0 steer
    nothing."""
    model, _ = tiny
    field = random_field(model, steer_layers=(1, 2))
    methods = build_methods(field, (1, 2), 2)
    assert list(methods) == ["base", "caa-1", "caa-multi", "svf-1", "svf-shared"]
    scale = strength_scale([field], (1, 2))
    assert scale == pytest.approx((field.mean_norm(1) + field.mean_norm(2)) / 2)
    ctx = steer_by_method(model, methods["caa-multi"], 0.4, scale)
    assert ctx.alphas == {1: pytest.approx(0.2 * scale), 2: pytest.approx(0.2 * scale)}
    assert steer_by_method(model, methods["caa-1"], -0.4, scale).alphas == {2: pytest.approx(-0.4 * scale)}
    assert not hasattr(steer_by_method(model, methods["base"], 0.4, scale), "alphas")
    assert not hasattr(steer_by_method(model, methods["svf-1"], 0.0, scale), "alphas")
    with pytest.raises(ValueError, match="one_layer 3"):
        build_methods(field, (1, 2), 3)


def _merging_tokenizer():
    """One token per character, except "ab", which is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "ab": 3}
    for ch in [chr(i) for i in range(32, 127)]:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("ab|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def test_completion_is_scored_as_its_own_tokens():
    """Prompt "xa" + completion "bc": tokenised together, "ab" would merge across the boundary;
    the completion is scored as its own tokens "b", "c" after the prompt's "x", "a"."""
    from helpers import tiny_model

    tok = _merging_tokenizer()
    assert tok("xabc", add_special_tokens=False).input_ids != (
        tok("xa", add_special_tokens=False).input_ids + tok("bc", add_special_tokens=False).input_ids)
    model = tiny_model("llama", vocab_size=len(tok), layers=2)
    got = completion_logprobs(model, tok, ["xa", "zzab"], ["bc", "abab"], chat=False, batch_size=3)
    want = torch.tensor([[_direct(model, tok, p, c) for c in ["bc", "abab"]] for p in ["xa", "zzab"]])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts, completions, match", [
    ([], ["a"], "need prompts and completions"),
    (["a"], [], "need prompts and completions"),
    (["a"], ["b", ""], "at least one token"),
])
def test_completion_logprobs_rejects(tiny, prompts, completions, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        completion_logprobs(model, tok, prompts, completions, chat=False)


def test_cache_is_read_without_deprecation_messages(tiny, monkeypatch):
    """The KV cache is read and passed by the names the installed transformers expects: no
    deprecation message is logged during an evaluation (transformers logs its deprecations
    through ``Logger.warning_once``, recorded here instead of printed once per process)."""
    import logging

    said: list[str] = []
    monkeypatch.setattr(logging.Logger, "warning_once",
                        lambda self, msg, *args, **kwargs: said.append(str(msg)), raising=False)
    model, tok = tiny
    completion_logprobs(model, tok, PROMPTS[:2], COMPLETIONS[:2])
    assert not [m for m in said if "deprecated" in m], said
