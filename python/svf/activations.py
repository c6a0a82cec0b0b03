"""Hidden states of chosen decoder layers at each text's last real token, or at several
positions inside each text (padding-aware)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from .arguments import check_int
from .hf import check_layers, decoder_layers, layer_output
from .progress import progress_bar
from .tokenization import encode_texts, pad_id, pad_left


class _StopForward(Exception):
    """Raised after the last needed layer so the rest of the model is not run."""


def _layer_outputs_at(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    pick: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int,
    max_length: int,
    desc: str,
    progress: bool | None,
) -> list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch ``(text indices, attention mask, rows, columns, features)``, all but the indices
    on the CPU: ``pick(attention_mask)`` gives the ``(rows, columns)`` read in the left-padded
    batch, ``features`` ``[len(rows), len(layers), d]`` float32 are the layer outputs there.
    Texts are batched by length; the forward pass stops after the deepest requested layer."""
    layers = list(layers)
    check_layers(model, layers)
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)
    pad = pad_id(tokenizer)
    out = []

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
            rows, cols = pick(mask)
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            feats = torch.stack([captured[i][rows, cols].float() for i in layers], 1)
            out.append((idx, mask.cpu(), rows.cpu(), cols.cpu(), feats.cpu()))
            captured.clear()
    finally:
        for h in handles:
            h.remove()
    return out


def _last_real(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row and the column of its last real token (left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_real = torch.where(mask.bool(), pos, -1).amax(1)
    return torch.arange(len(mask), device=mask.device), last_real


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
    batches = _layer_outputs_at(model, tokenizer, texts, layers, _last_real, batch_size=batch_size,
                                max_length=max_length, desc=desc, progress=progress)
    assert batches, "no texts given"
    out = torch.empty(len(texts), len(list(layers)), batches[0][-1].shape[-1])
    for idx, _, _, _, feats in batches:
        out[torch.tensor(idx)] = feats
    return out


def inner_positions(length: int, skip: int, max_positions: int) -> list[int]:
    """The positions read in a text of ``length`` tokens: every one from ``skip`` to the last,
    or, when there are more than ``max_positions``, ``max_positions`` of them evenly spaced from
    ``skip`` to the last (both ends kept). A text of at most ``skip`` tokens gives its last token
    only; an empty one gives nothing."""
    if length <= 0:
        return []
    first, last = min(skip, length - 1), length - 1
    if last - first + 1 <= max_positions:
        return list(range(first, last + 1))
    if max_positions == 1:
        return [last]
    return [first + k * (last - first) // (max_positions - 1) for k in range(max_positions)]


def inner_columns(mask: torch.Tensor, skip: int, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` of :func:`inner_positions` in a padded batch, read from its attention
    mask ``[B, T]`` (the real tokens of a row are contiguous: left or right padding), row by row
    and position by position."""
    m = mask.bool().cpu()
    cols_all = torch.arange(m.shape[1]).expand_as(m)
    first = torch.where(m, cols_all, m.shape[1]).amin(1).tolist()
    length = m.sum(1).tolist()
    rows, cols = [], []
    for b, (f, n) in enumerate(zip(first, length)):
        picked = inner_positions(n, skip, max_positions)
        rows += [b] * len(picked)
        cols += [f + p for p in picked]
    return (torch.tensor(rows, dtype=torch.long, device=mask.device),
            torch.tensor(cols, dtype=torch.long, device=mask.device))


class PositionActivations(NamedTuple):
    """Hidden states at several positions per text: ``hidden`` ``[P, L, d]`` float32; ``text``
    ``[P]`` long, the index of the text each row came from; ``position`` ``[P]`` long, the row's
    token index in its text (0 = the first token, the tokenizer's leading special tokens
    included). Rows are grouped by text in the order of the texts, positions increasing, so each
    text's last row is its last token."""

    hidden: torch.Tensor
    text: torch.Tensor
    position: torch.Tensor

    def is_last(self) -> torch.Tensor:
        """``[P]`` bool: the row is its text's last token."""
        last = torch.ones(len(self.text), dtype=torch.bool)
        last[:-1] = self.text[1:] != self.text[:-1]
        return last


@torch.no_grad()
def position_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    skip: int = 3,
    max_positions: int = 16,
    batch_size: int = 16,
    max_length: int = 256,
    desc: str = "activations",
    progress: bool | None = None,
) -> PositionActivations:
    """Each layer's output at positions inside each text, from token index ``skip`` (0-based,
    the tokenizer's leading special tokens counted) to the last.

    A steering field scores and moves the hidden state at every generated token, that is inside
    unfinished text; these are training samples at such positions. The first ``skip`` tokens
    are left out (they carry little of a text's meaning yet); a text of at most ``skip`` tokens
    gives its last token only. At most ``max_positions`` positions are read per text, evenly
    spaced from token ``skip`` to the last and always including the last
    (:func:`inner_positions`), so memory is at most ``len(texts) * max_positions * len(layers)
    * d`` floats. Tokenisation, batching, truncation to ``max_length`` and ``progress`` are as
    in :func:`last_token_activations`, and the last row of each text equals that function's
    row for it.
    """
    check_int(skip, "skip", minimum=0)
    check_int(max_positions, "max_positions", minimum=1)
    batches = _layer_outputs_at(model, tokenizer, texts, layers,
                                lambda mask: inner_columns(mask, skip, max_positions),
                                batch_size=batch_size, max_length=max_length, desc=desc,
                                progress=progress)
    assert batches, "no texts given"
    hidden, text, position = [], [], []
    for idx, mask, rows, cols, feats in batches:
        first_real = mask.long().argmax(1)  # the first 1 of each row
        hidden.append(feats)
        text.append(torch.tensor(idx, dtype=torch.long)[rows])
        position.append(cols - first_real[rows])
    text_all = torch.cat(text)
    order = torch.argsort(text_all, stable=True)  # within a text, rows are already in order
    return PositionActivations(torch.cat(hidden)[order], text_all[order], torch.cat(position)[order])
