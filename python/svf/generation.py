"""Generation helpers shared by the CLI, the demo and the tests: batched continuations, and one
greedy continuation with a per-token progress bar and the concept score of every position."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from .arguments import check_bool, check_int, check_texts, check_tokenizer
from .hf import check_model
from .progress import progress_bar
from .steering import steer
from .steering_field import SteeringField
from .tokenization import check_chat, encode_prompts, format_prompts, pad_id

__all__ = ["TokenProgress", "format_prompts", "generate", "generate_ids", "position_scores"]


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    do_sample: bool = False,
    seed: int = 0,
    **kwargs,
) -> list[str]:
    """Continuations of ``prompts`` (left-padded batch), decoded without special tokens.

    ``chat``: render each prompt as a user turn of the chat template (None: when the tokenizer
    has one); prompts get the tokenizer's leading special tokens once (:mod:`svf.tokenization`).
    """
    check_model(model)
    check_tokenizer(tokenizer)
    prompts = check_texts(prompts, "prompts")
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_chat(chat)
    check_bool(do_sample, "do_sample")
    check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
    ids, mask = encode_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    if do_sample:
        torch.manual_seed(seed)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                         max_new_tokens=max_new_tokens, do_sample=do_sample,
                         pad_token_id=pad_id(tokenizer), **kwargs)
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


class TokenProgress(BaseStreamer):
    """A ``generate`` streamer that only counts: one step per generated token of a
    :func:`svf.progress.progress_bar` on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal; it appears after ``delay``
    seconds, so short generations print nothing.
    """

    def __init__(self, total: int, desc: str = "generate", enabled: bool | None = None,
                 delay: float = 0.5) -> None:
        self.bar = progress_bar(total=total, desc=desc, unit="tok", delay=delay, enabled=enabled)
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
