"""Hidden states of chosen decoder layers at each text's last real token (padding-aware)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .hf import check_layers, decoder_layers, layer_output
from .progress import progress_bar
from .tokenization import encode_texts, pad_id, pad_left


class _StopForward(Exception):
    """Raised after the last needed layer so the rest of the model is not run."""


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
    progress: bool | None = None,
) -> torch.Tensor:
    """``[len(texts), len(layers), d]`` float32: each layer's output at the last real token.

    Texts are tokenised as given (apply a chat template first if wanted) with the tokenizer's
    leading special tokens once (:func:`svf.tokenization.encode_texts`), batched by length to
    limit padding; the forward pass stops after the deepest requested layer. A text over
    ``max_length`` tokens is cut from the left: the leading special tokens and the text's last
    tokens, ``max_length`` in all, are read. ``progress``: a bar over the batches on stderr
    (None: only when stderr is a terminal; False: never).
    """
    layers = list(layers)
    check_layers(model, layers)
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: torch.Tensor | None = None
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)
    pad = pad_id(tokenizer)

    def hook_for(i: int):
        def hook(module, args, output):
            captured[i] = layer_output(output)
            if i == last:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        starts = range(0, len(order), batch_size)
        for s in progress_bar(starts, desc=desc, enabled=progress):
            idx = order[s : s + batch_size]
            ids, mask = pad_left(encode_texts(tokenizer, [texts[i] for i in idx], max_length), pad)
            ids, mask = ids.to(device), mask.to(device)
            pos = torch.arange(mask.shape[1], device=device).expand_as(mask)
            last_real = torch.where(mask.bool(), pos, -1).amax(1)
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
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
