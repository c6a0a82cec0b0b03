"""The natural steering direction (DESIGN.md §2): estimate the Fisher information of the model's
next-token distribution with respect to a layer's residual stream, and choose its damping.

For decoder layer ``l``, a context ``x`` and ``δ`` added to the layer's output at the last
position of ``x`` only::

    g = ∂ log p(y | x; h_l + δ) / ∂δ  at δ = 0,        F_l = E_x E_{y ~ p(.|x)} [g gᵀ]

so ``½ δᵀ F_l δ`` is, to second order, the KL divergence a push ``δ`` causes in the next-token
distribution. Contexts are the prompts followed by a prefix of a continuation the unsteered
model samples at temperature 1, and ``y`` is drawn from the model's own softmax there: both come
from the model's distribution, as when it generates. A perturbation at the last position changes
only that position's next-token distribution, so a batch's per-row gradients are exact, and one
backward pass gives them for every layer at once.

The natural direction uses ``M = (F / mean_eig(F) + lam I)^-1`` (folded into ``B = A @ M``,
:meth:`svf.scorer.ConceptScorer.fold`); ``lam`` is chosen on held-out prompts by the first-order
score gain per unit of sqrt-KL (:func:`choose_lambda`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from svf_kernels import FusedSteeringField, SVFArgumentError, field_direction

from .arguments import (
    check_int,
    check_optional_bool,
    check_texts,
    check_tokenizer,
    show,
)
from .data import NEUTRAL_PROMPTS
from .field_packing import check_fits_model
from .hf import check_layers, check_model, decoder_layers, distinct_layers, layer_output
from .progress import progress_bar
from .steering_field import SteeringField, check_train_layers
from .tokenization import check_chat, encode_texts, format_prompts, pad_id, pad_left

__all__ = [
    "LAMBDAS",
    "FisherEstimate",
    "add_natural_direction",
    "choose_lambda",
    "direction_criterion",
    "estimate_fisher",
    "natural_matrix",
]

#: The damping grid, relative to the Fisher's mean eigenvalue.
LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Fisher samples :func:`add_natural_direction` draws by default.
DEFAULT_SAMPLES = 256
#: Positions (distinct, at random) taken from each sampled continuation.
POSITIONS_PER_CONTINUATION = 4
#: Criteria within this relative distance of the best count as tied (the larger lambda wins).
_TIE = 1e-9


@dataclass
class FisherEstimate:
    """Fisher matrices of ``layers`` (``fisher [L, d, d]`` float32, symmetric PSD), the mean of
    ``g gᵀ`` over the samples, and each sample's context (token ids), drawn next token
    (``targets [S]``) and hidden states there (``hidden [S, L, d]`` float32, unperturbed)."""

    layers: tuple[int, ...]
    fisher: torch.Tensor
    hidden: torch.Tensor
    contexts: list[list[int]]
    targets: torch.Tensor

    @property
    def samples(self) -> int:
        return len(self.contexts)


def _check_unsteered(model: nn.Module) -> None:
    steered = [i for i, layer in enumerate(decoder_layers(model)) if isinstance(layer, FusedSteeringField)]
    if steered:
        raise SVFArgumentError(f"the model is steered at layers {steered}: the Fisher information "
                               "is that of the unsteered model, detach the steering first")


def _sample_contexts(model: nn.Module, tokenizer, prompts: list[str], samples: int, *,
                     max_new_tokens: int, chat: bool | None, batch_size: int,
                     gen: torch.Generator, progress: bool | None, desc: str) -> list[list[int]]:
    """``samples`` contexts: a prompt (rendered as :func:`svf.generate` renders it) and a prefix of
    a continuation sampled from the model at temperature 1, ending at one of up to
    :data:`POSITIONS_PER_CONTINUATION` random generated tokens (at the prompt's last token when
    the continuation is empty). The prompts are taken in a random order, cyclically."""
    rows = encode_texts(tokenizer, format_prompts(tokenizer, prompts, chat))
    order = torch.randperm(len(rows), generator=gen).tolist()
    stop = model.generation_config.eos_token_id
    stop = set() if stop is None else {stop} if isinstance(stop, int) else set(stop)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    contexts: list[list[int]] = []
    drawn = 0
    with progress_bar(total=samples, desc=f"{desc}: sample", enabled=progress) as bar:
        while len(contexts) < samples:
            want = math.ceil((samples - len(contexts)) / POSITIONS_PER_CONTINUATION)
            batch = [rows[order[(drawn + j) % len(rows)]] for j in range(min(batch_size, want))]
            drawn += len(batch)
            ids, mask = pad_left(batch, pad)
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, repetition_penalty=1.0, pad_token_id=pad)
            for prompt, cont in zip(batch, out[:, ids.shape[1] :].tolist()):
                n = next((i for i, t in enumerate(cont) if t in stop), len(cont))
                ends = (torch.randperm(n, generator=gen)[:POSITIONS_PER_CONTINUATION] + 1).tolist() if n else [0]
                contexts.extend(prompt + cont[:k] for k in ends[: samples - len(contexts)])
            bar.update(len(contexts) - bar.n)
    return contexts


def _fisher_of_contexts(model: nn.Module, contexts: list[list[int]], layers: list[int], *,
                        pad: int, batch_size: int, gen: torch.Generator, progress: bool | None,
                        desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fisher [L, d, d] float64, hidden [S, L, d] float32, targets [S])`` of the contexts."""
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    accepts = inspect.signature(model.forward).parameters
    S = len(contexts)
    order = sorted(range(S), key=lambda i: len(contexts[i]))  # similar lengths: less padding
    deltas: dict[int, torch.Tensor] = {}
    states: dict[int, torch.Tensor] = {}

    def hook_for(i: int):
        def hook(module, args, output):
            hs = layer_output(output)
            delta = torch.zeros(hs.shape[0], hs.shape[-1], dtype=hs.dtype, device=hs.device,
                                requires_grad=True)
            deltas[i], states[i] = delta, hs[:, -1].detach().float()
            moved = torch.cat([hs[:, :-1], hs[:, -1:] + delta[:, None]], dim=1)
            return (moved, *output[1:]) if isinstance(output, tuple) else moved

        return hook

    fisher = hidden = None
    targets = torch.empty(S, dtype=torch.long)
    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        for s in progress_bar(range(0, S, batch_size), desc=f"{desc}: gradients", enabled=progress):
            idx = order[s : s + batch_size]
            ids, mask = pad_left([contexts[i] for i in idx], pad)
            ids, mask = ids.to(device), mask.to(device)
            kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
            if "position_ids" in accepts:  # as generate numbers left-padded rows
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
            if "logits_to_keep" in accepts:
                kwargs["logits_to_keep"] = 1
            with torch.enable_grad():
                logits = model(**kwargs).logits[:, -1]
                logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
                y = torch.multinomial(logp.detach().exp().cpu(), 1, generator=gen)[:, 0]
                chosen = logp.gather(1, y.to(device)[:, None]).sum()
                grads = torch.autograd.grad(chosen, [deltas[i] for i in layers])
            g = torch.stack([x.detach().double().cpu() for x in grads], 1)  # [B, L, d]
            if fisher is None:
                d = g.shape[-1]
                fisher = torch.zeros(len(layers), d, d, dtype=torch.float64)
                hidden = torch.empty(S, len(layers), d)
            fisher += torch.einsum("bld,ble->lde", g, g)
            hidden[torch.tensor(idx)] = torch.stack([states[i].cpu() for i in layers], 1)
            targets[torch.tensor(idx)] = y
            deltas.clear()
            states.clear()
    finally:
        for handle in handles:
            handle.remove()
    fisher /= S
    return (fisher + fisher.transpose(1, 2)) / 2, hidden, targets


def estimate_fisher(model: nn.Module, tokenizer, prompts: Sequence[str], layers: Sequence[int], *,
                    samples: int = DEFAULT_SAMPLES, max_new_tokens: int = 32,
                    chat: bool | None = None, seed: int = 0, batch_size: int = 16,
                    progress: bool | None = None, desc: str = "fisher") -> FisherEstimate:
    """The Fisher information at each of ``layers`` from ``samples`` contexts (module docstring).

    Continuations of ``prompts`` are sampled at temperature 1 (no top-k or top-p), ``max_new_tokens``
    long at most, and up to :data:`POSITIONS_PER_CONTINUATION` random positions of each give
    contexts; ``seed`` fixes them and the drawn ``y`` (the global RNG is left as it was). The model
    is left as it was: no hooks stay and no parameter's ``requires_grad`` changes. ``progress``:
    bars on stderr (None: only on a terminal).
    """
    check_model(model)
    check_tokenizer(tokenizer)
    prompts = check_texts(prompts, "prompts")
    layers = distinct_layers(layers)
    check_layers(model, layers)
    check_int(samples, "samples", minimum=1)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_chat(chat)
    check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
    check_int(batch_size, "batch_size", minimum=1)
    check_optional_bool(progress, "progress")
    _check_unsteered(model)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        contexts = _sample_contexts(model, tokenizer, prompts, samples, max_new_tokens=max_new_tokens,
                                    chat=chat, batch_size=batch_size, gen=gen, progress=progress,
                                    desc=desc)
    fisher, hidden, targets = _fisher_of_contexts(model, contexts, layers, pad=pad_id(tokenizer),
                                                  batch_size=batch_size, gen=gen,
                                                  progress=progress, desc=desc)
    return FisherEstimate(tuple(layers), fisher.float(), hidden, contexts, targets)


def natural_matrix(fisher: torch.Tensor, lam: float) -> torch.Tensor:
    """``M = (F / mean_eig(F) + lam I)^-1`` in float64 for ``fisher`` ``[..., d, d]``: symmetric,
    positive definite; ``lam`` is relative to ``F``'s mean eigenvalue (``F = 0``: ``I / lam``)."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
        raise SVFArgumentError(f"lam must be a finite number > 0, got {show(lam)}")
    F = fisher.double()
    F = (F + F.transpose(-1, -2)) / 2
    d = F.shape[-1]
    mean = F.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    e, Q = torch.linalg.eigh(F)
    scaled = torch.where(mean[..., None] > 0, e.clamp_min(0) / mean[..., None].clamp_min(1e-300), 0.0)
    return (Q / (scaled + lam)[..., None, :]) @ Q.transpose(-1, -2)


def direction_criterion(field: SteeringField, layer: int, B: torch.Tensor | None,
                        hidden: torch.Tensor, fisher: torch.Tensor) -> float:
    """``mean_i(∇f(h_i)·u_i) / sqrt(mean_i(u_iᵀ F u_i))``, in float64: the first-order score gain
    of a unit push along the kernel's direction ``u_i`` at ``hidden [n, d]`` (``B`` its folded
    matrix, None: the gradient) per unit of sqrt-KL under ``fisher`` ``[d, d]`` (NaN when the
    directions leave the distribution unchanged)."""
    f = field.scorer.fold(layer)
    args = (f.A[None].double(), f.c[None].double(), f.w2[None].double(), f.b2.reshape(1).double())
    h, eps = hidden.double(), field.scorer.config.eps
    _, grad = field_direction(h, *args, eps=eps)  # ∇_h f
    _, v = field_direction(h, *args, eps=eps, B=None if B is None else B[None].double())
    u = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    gain = (grad * u).sum(-1).mean()
    kl = ((u @ fisher.double()) * u).sum(-1).mean()
    return float(gain / kl.sqrt()) if kl > 0 else math.nan


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def choose_lambda(field: SteeringField, layer: int, fisher: torch.Tensor, val_fisher: torch.Tensor,
                  val_hidden: torch.Tensor, lambdas: Sequence[float] = LAMBDAS) -> tuple[float, dict]:
    """The damping in ``lambdas`` whose ``M(fisher, lam)`` gives the largest
    :func:`direction_criterion` on held-out hidden states ``val_hidden [n, d]`` under their own
    Fisher ``val_fisher`` (ties: the larger lambda), and the table ``{"lambdas", "natural"
    (one criterion per lambda), "gradient" (M = I, lambda -> inf)}`` (None for a non-finite one)."""
    lambdas = _check_lambdas(lambdas)
    scores = [direction_criterion(field, layer, field.scorer.fold(layer, natural=natural_matrix(fisher, lam)).B,
                                  val_hidden, val_fisher) for lam in lambdas]
    finite = [s for s in scores if math.isfinite(s)]
    if finite:
        best = max(finite)
        chosen = max(lam for lam, s in zip(lambdas, scores)
                     if math.isfinite(s) and s >= best - _TIE * abs(best))
    else:
        chosen = max(lambdas)
    gradient = direction_criterion(field, layer, None, val_hidden, val_fisher)
    return chosen, {"lambdas": list(lambdas), "natural": [_finite_or_none(s) for s in scores],
                    "gradient": _finite_or_none(gradient)}


def _check_lambdas(lambdas: object) -> list[float]:
    items = list(lambdas) if isinstance(lambdas, Sequence) and not isinstance(lambdas, str) else []
    if not items or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
                        or x <= 0 for x in items):
        raise SVFArgumentError(f"lambdas must be a non-empty sequence of finite numbers > 0, got "
                               f"{show(lambdas)}")
    return sorted({float(x) for x in items})


def add_natural_direction(field: SteeringField, model: nn.Module, tokenizer, *,
                          prompts: Sequence[str] = NEUTRAL_PROMPTS, layers: Sequence[int] | None = None,
                          samples: int = DEFAULT_SAMPLES, lambdas: Sequence[float] = LAMBDAS,
                          max_new_tokens: int = 32, chat: bool | None = None, seed: int = 0,
                          batch_size: int = 16, progress: bool | None = None) -> dict:
    """Give ``field`` the natural direction at ``layers`` (default: its steering layers), in place;
    returns its ``natural`` metadata (layers, chosen ``lambdas``, sample counts, criterion table).

    The prompts are split, every fourth to validation (at least one), and ``samples`` Fisher
    samples likewise (a quarter, at least one, to validation). The matrices are ``B = A @ M(F,
    lam)`` with ``F`` from the estimation prompts and, per layer, the ``lam`` of ``lambdas`` that
    :func:`choose_lambda` picks on the validation prompts' hidden states and Fisher; the table
    reports each lambda's criterion and the plain gradient's.
    """
    if not isinstance(field, SteeringField):
        raise SVFArgumentError(f"field must be a SteeringField, got {type(field).__name__}")
    check_model(model)
    check_fits_model([field], model)
    layers = sorted(distinct_layers(field.steer_layers if layers is None else layers))
    check_train_layers([field], layers)
    prompts = check_texts(prompts, "prompts")
    if len(prompts) < 2:
        raise SVFArgumentError(f"prompts has {len(prompts)} prompt; at least 2 are needed (one for "
                               "the estimate, one to choose the damping on)")
    check_int(samples, "samples", minimum=2)
    lambdas = _check_lambdas(lambdas)
    held_out = set(range(3, len(prompts), 4)) or {len(prompts) - 1}
    val_prompts = [p for i, p in enumerate(prompts) if i in held_out]
    est_prompts = [p for i, p in enumerate(prompts) if i not in held_out]
    n_val = max(1, samples // 4)
    common = {"max_new_tokens": max_new_tokens, "chat": chat, "seed": seed, "batch_size": batch_size,
              "progress": progress}
    est = estimate_fisher(model, tokenizer, est_prompts, layers, samples=samples - n_val,
                          desc="fisher (estimate)", **common)
    val = estimate_fisher(model, tokenizer, val_prompts, layers, samples=n_val,
                          desc="fisher (validation)", **common)
    chosen, tables, matrices = [], [], []
    for k, layer in enumerate(layers):
        lam, table = choose_lambda(field, layer, est.fisher[k], val.fisher[k], val.hidden[:, k], lambdas)
        chosen.append(lam)
        tables.append(table)
        matrices.append(field.scorer.fold(layer, natural=natural_matrix(est.fisher[k], lam)).B)
    field.natural_B = torch.stack(matrices).float()
    field.natural = {
        "layers": list(layers),
        "lambdas": chosen,
        "samples": est.samples,
        "validation_samples": val.samples,
        "criterion": {"lambdas": list(lambdas), "natural": [t["natural"] for t in tables],
                      "gradient": [t["gradient"] for t in tables]},
    }
    return copy.deepcopy(field.natural)
