"""Likelihood of completions after prompts, computed the way generation sees them.

The prompt runs first (left-padded, KV cache), then the completion tokens teacher-forced on
that cache: so steering attached to the model acts at exactly the positions it acts on when
generating (the last prompt token, then every new token; DESIGN.md §4). Position ids follow
the attention mask, so a row's result does not depend on its batch's padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .generation import format_prompts


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def completion_logprobs(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool = True,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """``[len(prompts), len(completions)]``: mean per-token log-likelihood of each completion
    (its own tokens only) after each prompt, under whatever steering is attached."""
    if not prompts or not completions:
        raise ValueError(f"need prompts and completions, got {len(prompts)} and {len(completions)}")
    device = next(model.parameters()).device
    texts = format_prompts(tokenizer, prompts, chat)
    p_ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    c_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in completions]
    if any(len(c) == 0 for c in c_ids) or any(len(p) == 0 for p in p_ids):
        raise ValueError("every prompt and completion must tokenize to at least one token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(completions))]
    out = torch.empty(len(prompts), len(completions))
    chunks = range(0, len(pairs), batch_size)
    for start in tqdm(chunks, desc="completion likelihoods", disable=not progress):
        batch = pairs[start : start + batch_size]
        P = max(len(p_ids[i]) for i, _ in batch)
        C = max(len(c_ids[j]) for _, j in batch)
        prompt = torch.full((len(batch), P), pad, dtype=torch.long)
        pmask = torch.zeros(len(batch), P, dtype=torch.long)
        comp = torch.full((len(batch), C), pad, dtype=torch.long)
        cmask = torch.zeros(len(batch), C, dtype=torch.long)
        for r, (i, j) in enumerate(batch):
            p, c = p_ids[i], c_ids[j]
            prompt[r, P - len(p) :], pmask[r, P - len(p) :] = torch.tensor(p), 1  # left padding
            comp[r, : len(c)], cmask[r, : len(c)] = torch.tensor(c), 1  # right padding
        prompt, pmask, comp, cmask = (t.to(device) for t in (prompt, pmask, comp, cmask))
        first = model(input_ids=prompt, attention_mask=pmask, position_ids=_positions(pmask), use_cache=True)
        mask = torch.cat([pmask, cmask], 1)
        rest = model(input_ids=comp, attention_mask=mask, position_ids=_positions(mask)[:, P:],
                     past_key_values=first.past_key_values, use_cache=True)
        logits = torch.cat([first.logits[:, -1:], rest.logits[:, :-1]], 1).float()
        lp = logits.log_softmax(-1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        mean = (lp * cmask).sum(1) / cmask.sum(1)
        for r, (i, j) in enumerate(batch):
            out[i, j] = mean[r].cpu()
    return out
