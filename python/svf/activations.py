"""Hidden states of chosen decoder layers at each text's last real token (padding-aware)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .hf import check_layers, decoder_layers, layer_output


class _StopForward(Exception):
    """Raised after the last needed layer so the rest of the model is not run."""


@contextmanager
def _truncating_left(tokenizer) -> Iterator[None]:
    """Truncate from the left while inside: a text over the limit keeps its own last tokens,
    so its last token is the one whose activation is read. The tokenizer's setting comes back."""
    before = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        yield
    finally:
        tokenizer.truncation_side = before


@torch.no_grad()
def last_token_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    desc: str = "activations",
    progress: bool = True,
) -> torch.Tensor:
    """``[len(texts), len(layers), d]`` float32: each layer's output at the last real token.

    Texts are tokenised as given (apply a chat template first if wanted), batched by length
    to limit padding; the forward pass stops after the deepest requested layer. A text over
    ``max_length`` tokens is cut from the left: its last ``max_length`` tokens are read.
    """
    layers = list(layers)
    check_layers(model, layers)
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: torch.Tensor | None = None
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)

    def hook_for(i: int):
        def hook(module, args, output):
            captured[i] = layer_output(output)
            if i == last:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
            idx = order[s : s + batch_size]
            with _truncating_left(tokenizer):
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            mask = enc["attention_mask"]
            pos = torch.arange(mask.shape[1], device=device).expand_as(mask)
            last_real = torch.where(mask.bool(), pos, -1).amax(1)
            try:
                model(**enc, use_cache=False)
            except _StopForward:
                pass
            rows = torch.arange(len(idx), device=device)
            feats = torch.stack([captured[i][rows, last_real].float() for i in layers], 1)
            if out is None:
                out = torch.empty(len(texts), len(layers), feats.shape[-1])
            out[torch.tensor(idx)] = feats.cpu()
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    assert out is not None, "no texts given"
    return out
