"""Sampled continuations and their fluency, for the open-ended and long-form evaluation.

:func:`sample` generates ``samples`` continuations per prompt under whatever steering is
attached (the same seeds for every method, so methods are compared on common random
numbers); :func:`token_nll` scores the generated tokens under the model as called (call it
unsteered for fluency). Rows are prompt-major: row ``p * samples + s``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LogitsProcessorList

from ..tokenization import check_chat, encode_prompts, pad_id
from .nucleus import NucleusWarper


@dataclass
class Continuations:
    """Generated token ids per row (cut at the first end-of-sequence token) and the prompts'
    left-padded ids and mask they were generated from."""

    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    tokens: list[list[int]]
    texts: list[str]
    samples: int

    @property
    def n_prompts(self) -> int:
        return len(self.tokens) // self.samples


def _stop_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return set(ids)


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples: int = 3,
    max_new_tokens: int = 48,
    min_new_tokens: int = 0,
    chat: bool | None = None,
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 0.9,
    batch_size: int = 96,
) -> Continuations:
    """``samples`` sampled continuations of each prompt (batches of ``batch_size`` rows, each
    batch seeded from ``seed`` and its index, so every method sees the same seeds). Prompts are
    rendered and encoded as :func:`svf.generate` does (``chat``, None: the chat template when
    the tokenizer has one). Temperature and nucleus filtering are :class:`NucleusWarper`'s:
    transformers' warpers' tokens without sorting the vocabulary at every step."""
    check_chat(chat)
    if not prompts:
        raise ValueError("no prompts")
    if samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"samples, max_new_tokens and batch_size must be >= 1, got "
                         f"{samples}, {max_new_tokens}, {batch_size}")
    pad = pad_id(tokenizer)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [p for p in prompts for _ in range(samples)], chat)
    device = next(model.parameters()).device
    stop = _stop_ids(model, tokenizer)
    warp = LogitsProcessorList([NucleusWarper(temperature, top_p)])
    tokens: list[list[int]] = []
    for k, start in enumerate(range(0, len(prompt_ids), batch_size)):
        ids = prompt_ids[start : start + batch_size].to(device)
        mask = prompt_mask[start : start + batch_size].to(device)
        torch.manual_seed(seed * 1_000_003 + k)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, logits_processor=warp, pad_token_id=pad)
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            tokens.append(row[:cut])
    decoded = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Continuations(prompt_ids, prompt_mask, tokens, decoded, samples)


def _keeps_logits(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (then the vocabulary projection runs
    on the scored positions only: the same values, a fraction of the work)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def token_nll(model: nn.Module, cont: Continuations, *, batch_size: int = 32) -> list[torch.Tensor]:
    """Per row, the negative log-likelihood of each generated token after its prompt under
    ``model`` as called (one teacher-forced pass; detach steering to score fluency)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(cont.tokens), batch_size):
        rows = cont.tokens[start : start + batch_size]
        T = max(1, max(len(r) for r in rows))
        gen = torch.zeros(len(rows), T, dtype=torch.long)
        gmask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            gen[i, : len(r)], gmask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
        prompt = cont.prompt_ids[start : start + batch_size]
        mask = torch.cat([cont.prompt_mask[start : start + batch_size], gmask], 1)
        ids = torch.cat([prompt, gen], 1).to(device)
        mask = mask.to(device)
        kw = {"logits_to_keep": T + 1} if _keeps_logits(model) else {}  # only where scored
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp_min(0), **kw).logits
        lp = logits[:, -(T + 1) : -1].float().log_softmax(-1)
        nll = -lp.gather(-1, gen.to(device).unsqueeze(-1)).squeeze(-1).cpu()
        out.extend(nll[i, : len(r)] for i, r in enumerate(rows))
    return out


def perplexity(nll: torch.Tensor) -> float:
    """``exp`` of the mean token NLL (NaN for an empty continuation)."""
    return math.exp(float(nll.mean())) if nll.numel() else float("nan")
