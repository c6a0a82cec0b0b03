"""Batched generation helpers shared by the CLI, the demo and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .arguments import check_bool, check_int, check_texts, check_tokenizer
from .hf import check_model


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
