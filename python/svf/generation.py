"""Generation helpers shared by the CLI, the demo and the tests: batched continuations, and one
greedy continuation with a per-token progress bar and the concept score of every position."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from .arguments import check_bool, check_int, check_texts, check_tokenizer
from .hf import check_model
from .steering import steer
from .steering_field import SteeringField


def format_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[str]:
    """Render prompts as a user turn of the chat template (when the tokenizer has one)."""
    check_tokenizer(tokenizer)
    prompts = check_texts(prompts, "prompts")
    check_bool(chat, "chat")
    if chat and getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
    return list(prompts)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    chat: bool = True,
    do_sample: bool = False,
    seed: int = 0,
    **kwargs,
) -> list[str]:
    """Continuations of ``prompts`` (left-padded batch), decoded without special tokens."""
    check_model(model)
    check_tokenizer(tokenizer)
    prompts = check_texts(prompts, "prompts")
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_bool(chat, "chat")
    check_bool(do_sample, "do_sample")
    check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
    texts = format_prompts(tokenizer, prompts, chat)
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    if do_sample:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, **kwargs)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


class TokenProgress(BaseStreamer):
    """A ``generate`` streamer that only counts: one tqdm step per generated token, on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal (tqdm's ``disable=None``); it
    appears after ``delay`` seconds, so short generations print nothing.
    """

    def __init__(self, total: int, desc: str = "generate", enabled: bool | None = None,
                 delay: float = 0.5) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=False,
                        delay=delay, disable=None if enabled is None else not enabled)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """``generate`` hands over the prompt first, then each new token."""
        if self._prompt_seen:
            self.bar.update(1)
        self._prompt_seen = True

    def end(self) -> None:
        """Close the bar (``generate`` calls this when it finishes)."""
        self.bar.close()


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    pad_token_id: int,
    progress: bool | None = None,
    desc: str = "generate",
) -> torch.Tensor:
    """Greedy continuation of one unpadded prompt ``input_ids [1, P]``: the whole sequence
    ``[1, P + N]``. ``progress``: a per-token bar on stderr (None: only on a terminal)."""
    check_model(model)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    if progress is not None:
        check_bool(progress, "progress")
    ids = input_ids.to(next(model.parameters()).device)
    streamer = TokenProgress(max_new_tokens, desc, enabled=progress)
    try:
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=pad_token_id, streamer=streamer)
    finally:
        streamer.end()


@torch.no_grad()
def position_scores(model: nn.Module, field: SteeringField, input_ids: torch.Tensor,
                    layer: int) -> torch.Tensor:
    """The field's concept-scorer logit at every position of ``input_ids [1, T]`` -> ``[T]``.

    Read at the output of decoder layer ``layer`` (what steering at that layer scores before it
    moves the state): it covers the text up to and including each position. Steering at
    ``layer`` and above cannot change it, so for the lowest steered layer it depends on the
    tokens alone.
    """
    ids = input_ids.to(next(model.parameters()).device)
    with steer(model, field, alpha=0.0, layers=[layer], positions="all", record_scores=True) as s:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    out = torch.full((ids.shape[1],), float("nan"))
    for _, t, score in s.scores_by_position():
        out[t] = score[0]
    return out
