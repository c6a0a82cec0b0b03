"""MWE A/B behaviour questions, the paper's protocol (DESIGN.md §8, "MCQ").

Per behaviour the items are split 40/10/50 (train/validation/test): one shared field is
trained on the train split's contrastive pairs; per steered method the total strength T
(:mod:`svf.eval.methods`) is chosen on validation (largest mean gap shift toward the behaviour)
and the test split is read once, at total strengths ``0, T/2, T``. The gap is ``logit(matching answer) - logit(other answer)`` at the
answer position: the last token the two renderings share (DESIGN.md §4 steers exactly there).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data import load_mwe, mwe_item_pairs, split
from ..progress import progress_bar
from ..steering_field import strength_scale
from ..tokenization import encode_texts, pad_id
from ..training import TrainConfig, train_field
from .base_field import eval_train_config
from .methods import Method, build_methods, steer_by_method
from .metrics import mcq_accuracy, mcq_gap, steerability

__all__ = ["ab_gaps", "run_mwe"]

MWE_FRACTIONS = (0.4, 0.1, 0.5)


def _answer_ids(item: Mapping[str, str], tokenizer) -> tuple[list[int], int, int]:
    """The shared prefix's token ids (with the tokenizer's leading special tokens, as training
    reads the pair texts) and the first token of each answer after it."""
    pair = mwe_item_pairs([item], tokenizer)[0]
    m, o = encode_texts(tokenizer, [pair.positive, pair.negative])
    k = next((i for i, (a, b) in enumerate(zip(m, o)) if a != b), min(len(m), len(o)))
    if k == 0 or k == len(m) or k == len(o):
        raise ValueError(f"the two answers of {item['question'][:60]!r} do not tokenize to a shared "
                         f"prefix followed by different tokens (shared length {k}, "
                         f"lengths {len(m)} and {len(o)})")
    return m[:k], m[k], o[k]


@torch.no_grad()
def ab_gaps(model: nn.Module, tokenizer, items: Sequence[Mapping[str, str]], *,
            batch_size: int = 16) -> torch.Tensor:
    """``[P]``: logit(matching answer) - logit(other answer) at the answer position, under
    whatever steering is attached (left-padded batches, position ids from the mask)."""
    if not items:
        raise ValueError("no items")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    enc = [_answer_ids(it, tokenizer) for it in items]
    pad = pad_id(tokenizer)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))  # less padding per batch
    out = torch.empty(len(enc))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        T = max(len(enc[i][0]) for i in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for r, i in enumerate(rows):  # left padding: every row's answer position is the last
            n = len(enc[i][0])
            ids[r, T - n :], mask[r, T - n :] = torch.tensor(enc[i][0]), 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        match = torch.tensor([enc[i][1] for i in rows], device=device)
        other = torch.tensor([enc[i][2] for i in rows], device=device)
        out[rows] = mcq_gap(logits[:, -1], match, other).cpu()
    return out


def _gaps_at(model, tokenizer, items, method: Method, total_strength: float, scale: float,
             batch_size: int) -> torch.Tensor:
    with steer_by_method(model, method, total_strength, scale):
        return ab_gaps(model, tokenizer, items, batch_size=batch_size)


def run_mwe(model: nn.Module, tokenizer, behaviors: Sequence[str], *,
            train_layers: Sequence[int], steer_layers: Sequence[int],
            sweep: Sequence[float] = (0.05, 0.1, 0.2), n_items: int | None = None,
            train_config: TrainConfig | None = None, seed: int = 0, model_name: str = "",
            batch_size: int = 16, progress: bool | None = None) -> list[dict]:
    """Every behaviour, every steered method, toward the behaviour: one row per (behaviour,
    method) with the total strength chosen on validation and the test accuracy, shift, rates
    and slope. ``progress``: the bar's rule of :func:`svf.progress.progress_bar`."""
    if not behaviors:
        raise ValueError("no behaviours")
    if not sweep or any(not s > 0 for s in sweep):
        raise ValueError(f"sweep must be positive total strengths, got {list(sweep)}")
    if not steer_layers:
        raise ValueError("no steer_layers")
    if n_items is not None and n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    config = train_config or eval_train_config()
    steer_layers = sorted(steer_layers)
    rows: list[dict] = []
    for behavior in behaviors:
        items = load_mwe(behavior)
        if not items:
            raise ValueError(f"behaviour {behavior!r} has no items")
        if n_items is not None and n_items < len(items):
            items = random.Random(seed).sample(items, n_items)
        train, val, test = split(items, MWE_FRACTIONS, seed)
        if not (train and val and test):
            raise ValueError(f"behaviour {behavior!r}: {len(items)} items are too few for the "
                             f"40/10/50 split (train/val/test = {len(train)}/{len(val)}/{len(test)})")
        shared, _ = train_field(model, tokenizer, mwe_item_pairs(train, tokenizer), concept=behavior,
                                train_layers=train_layers, steer_layers=steer_layers,
                                config=config, model_name=model_name, progress=False)
        methods = build_methods(shared, steer_layers, steer_layers[len(steer_layers) // 2])
        scale = strength_scale([shared], steer_layers)
        base_val = ab_gaps(model, tokenizer, val, batch_size=batch_size)
        base_test = ab_gaps(model, tokenizer, test, batch_size=batch_size)
        base_acc = mcq_accuracy(base_test)
        steered = [(name, m) for name, m in methods.items() if m.fields]
        for name, method in progress_bar(steered, desc=f"A/B {behavior}", enabled=progress):
            shift = [float((_gaps_at(model, tokenizer, val, method, s, scale, batch_size)
                            - base_val).mean()) for s in sweep]
            best = float(sweep[max(range(len(sweep)), key=shift.__getitem__)])
            totals = [0.0, best / 2, best]
            test_gaps = torch.stack([base_test] + [
                _gaps_at(model, tokenizer, test, method, s, scale, batch_size) for s in totals[1:]])
            stats = steerability([abs(s) for s in totals], test_gaps, sign=1)
            rows.append({
                "behavior": behavior, "method": name, "layers": "+".join(map(str, method.layers)),
                "total_strength": best, "n_test": len(test), "base_accuracy": base_acc,
                "steered_accuracy": mcq_accuracy(test_gaps[-1]),
                "mean_shift": stats["mean_shift"], "steerable_rate": stats["steerable_rate"],
                "anti_steerable": stats["anti_steerable"], "mean_slope": stats["mean_slope"],
            })
    return rows
