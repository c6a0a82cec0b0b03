"""Likelihood of completions after prompts, computed the way generation sees them.

The prompt runs first (left-padded, KV cache, once per prompt: the cache is repeated for each
completion), then the completion tokens teacher-forced on that cache: so steering attached to the model acts at exactly the positions it acts on when
generating (the last prompt token, then every new token; DESIGN.md §4). Position ids follow
the attention mask, so a row's result does not depend on its batch's padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ..progress import progress_bar
from ..tokenization import check_chat, encode_continuations, encode_texts, format_prompts, pad_id


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _output_cache(out) -> object:
    """The KV cache of a forward's output: its ``cache`` field in newer transformers (reading the
    deprecated ``past_key_values`` there logs a deprecation), ``past_key_values`` before."""
    if "cache" in out:
        return out["cache"]
    return out.past_key_values


def _cache_kwarg(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` (newer transformers) or the
    deprecated ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def completion_logprobs(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> torch.Tensor:
    """``[len(prompts), len(completions)]``: mean per-token log-likelihood of each completion
    (its own tokens only) after each prompt, under whatever steering is attached.

    Prompts are rendered and encoded as :func:`svf.generate` does (``chat``: the chat template,
    None: when the tokenizer has one; the tokenizer's leading special tokens once); completions
    get no special tokens."""
    check_chat(chat)
    if not prompts or not completions:
        raise ValueError(f"need prompts and completions, got {len(prompts)} and {len(completions)}")
    device = next(model.parameters()).device
    p_ids = encode_texts(tokenizer, format_prompts(tokenizer, prompts, chat))
    c_ids = encode_continuations(tokenizer, completions)
    if any(len(c) == 0 for c in c_ids) or any(len(p) == 0 for p in p_ids):
        raise ValueError("every prompt and completion must tokenize to at least one token")
    pad = pad_id(tokenizer)
    n_c = len(completions)
    C = max(len(c) for c in c_ids)
    comp1 = torch.full((n_c, C), pad, dtype=torch.long)
    cmask1 = torch.zeros(n_c, C, dtype=torch.long)
    for j, c in enumerate(c_ids):  # right padding
        comp1[j, : len(c)], cmask1[j, : len(c)] = torch.tensor(c), 1
    out = torch.empty(len(prompts), n_c)
    # Each prompt runs once; its KV cache is repeated for every completion.
    per_batch = max(1, batch_size // n_c)
    chunks = range(0, len(prompts), per_batch)
    for start in progress_bar(chunks, desc="completion likelihoods", enabled=progress):
        rows = list(range(start, min(start + per_batch, len(prompts))))
        P = max(len(p_ids[i]) for i in rows)
        prompt = torch.full((len(rows), P), pad, dtype=torch.long)
        pmask = torch.zeros(len(rows), P, dtype=torch.long)
        for r, i in enumerate(rows):  # left padding
            prompt[r, P - len(p_ids[i]) :], pmask[r, P - len(p_ids[i]) :] = torch.tensor(p_ids[i]), 1
        prompt, pmask = prompt.to(device), pmask.to(device)
        first = model(input_ids=prompt, attention_mask=pmask, position_ids=_positions(pmask), use_cache=True)
        cache = _output_cache(first)
        cache.batch_repeat_interleave(n_c)
        pmask_r = pmask.repeat_interleave(n_c, 0)
        comp = comp1.repeat(len(rows), 1).to(device)
        cmask = cmask1.repeat(len(rows), 1).to(device)
        mask = torch.cat([pmask_r, cmask], 1)
        rest = model(input_ids=comp, attention_mask=mask, position_ids=_positions(mask)[:, P:],
                     use_cache=True, **{_cache_kwarg(model): cache})
        last = first.logits[:, -1:].repeat_interleave(n_c, 0)
        logits = torch.cat([last, rest.logits[:, :-1]], 1).float()
        lp = logits.log_softmax(-1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        mean = (lp * cmask).sum(1) / cmask.sum(1)
        out[rows] = mean.view(len(rows), n_c).cpu()
    return out
