"""KNN steering baseline: move each row towards the centroid of its K nearest target activations.

``KNNField`` is a :class:`svf_kernels.RowField`, so it attaches like SVF's folded field or a
CAA vector (``Steering(model, {layer: field}, {layer: alpha})``): for a row ``h`` it finds the
K nearest entries of a bank of target-class activations (Euclidean), and moves ``h`` by
``alpha`` (an L2 displacement, DESIGN.md §4) towards their centroid. The score is minus the
mean distance to those neighbours (higher = closer to the target class).
``knn_fields`` builds one field per layer from positive texts with the training code's
activation extraction (last real token, output of each decoder layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from svf_kernels import RowField, SVFArgumentError

from ..activations import last_token_activations
from ..arguments import check_bool, check_int, check_texts, check_tokenizer
from ..hf import check_layers, check_model, layer_list

#: Working-memory budget of one chunk of rows (its ``[chunk, M]`` distances and the
#: ``[chunk, K, d]`` neighbours gathered from the bank).
CHUNK_BYTES = 64 << 20


class KNNField(RowField):
    """``h += alpha * unit(centroid(K nearest bank rows) - h)``; score ``-mean distance``.

    ``bank``: ``[M, d]`` target-class activations (kept as a float32 buffer). ``k``: number
    of neighbours (``min(k, M)`` are used). ``chunk_rows``: rows processed at once (default:
    as many as fit in :data:`CHUNK_BYTES`). Arithmetic is float32 whatever the rows' dtype.
    Rows with a zero strength, non-finite rows and rows already at their centroid are left
    bit-identical; a non-finite row scores NaN.
    """

    def __init__(self, bank: torch.Tensor, k: int = 64, *, chunk_rows: int | None = None) -> None:
        super().__init__()
        if not isinstance(bank, torch.Tensor):
            raise SVFArgumentError(f"bank must be a tensor [M, d], got {type(bank).__name__}")
        if bank.dim() != 2:
            raise SVFArgumentError(f"bank must be 2-D [M, d], got shape {tuple(bank.shape)}")
        if bank.shape[0] < 1 or bank.shape[1] < 1:
            raise SVFArgumentError(f"bank is empty (shape {tuple(bank.shape)}): need M >= 1 rows, d >= 1")
        if bank.is_complex() or bank.dtype == torch.bool:
            raise SVFArgumentError(f"bank must be a real-valued tensor, got dtype {bank.dtype}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SVFArgumentError(f"k must be an integer >= 1, got {k!r}")
        if chunk_rows is not None and (
            isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
        ):
            raise SVFArgumentError(f"chunk_rows must be an integer >= 1 or None, got {chunk_rows!r}")
        bank = bank.detach().float().contiguous()
        if not torch.isfinite(bank).all():
            bad = (~torch.isfinite(bank).all(1)).nonzero().flatten()[:5].tolist()
            raise SVFArgumentError(f"bank has non-finite values (rows {bad}...)")
        self.register_buffer("bank", bank)
        # Distances are computed on the bank centred on its mean (they are translation
        # invariant): the ``|x|^2 - 2 x.b + |b|^2`` expansion then loses far less to
        # cancellation when the activations share a large common component.
        mean = bank.mean(0)
        centred = (bank - mean).contiguous()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("centred", centred, persistent=False)
        self.register_buffer("centred_sq", (centred * centred).sum(1), persistent=False)
        self.k = int(k)
        self.chunk_rows = chunk_rows
        self.register_load_state_dict_post_hook(lambda module, _keys: module._derive())

    def _derive(self) -> None:
        """Recompute the derived buffers after the bank was replaced (``load_state_dict``)."""
        bank = self.bank
        self.mean = bank.mean(0)
        self.centred = (bank - self.mean).contiguous()
        self.centred_sq = (self.centred * self.centred).sum(1)

    @property
    def hidden_size(self) -> int:
        return self.bank.shape[1]

    @property
    def bank_size(self) -> int:
        return self.bank.shape[0]

    @property
    def neighbours(self) -> int:
        """K actually used: ``min(k, M)``."""
        return min(self.k, self.bank.shape[0])

    def extra_repr(self) -> str:
        return f"bank_size={self.bank_size}, hidden_size={self.hidden_size}, k={self.k}"

    def _chunk(self) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        M, d = self.bank.shape
        per_row = 4 * (M + 2 * self.neighbours * d)  # distances; gathered neighbours and their diffs
        return max(1, CHUNK_BYTES // per_row)

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != self.hidden_size:
            shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise SVFArgumentError(f"rows must be [n, {self.hidden_size}], got {shape}")
        if not rows.is_floating_point():
            raise SVFArgumentError(f"rows must be floating point, got {rows.dtype}")
        n = rows.shape[0]
        per_row = isinstance(alpha, torch.Tensor)
        if per_row:
            if alpha.numel() != n:
                raise SVFArgumentError(f"alpha tensor must have one strength per row ({n}), got {alpha.numel()}")
            a_all = alpha.to(device=rows.device, dtype=torch.float32).reshape(n, 1)
        else:
            a_all = float(alpha)
        b = self._buffers
        centred, sq, mean = b["centred"], b["centred_sq"], b["mean"]
        if centred.device != rows.device or centred.dtype != torch.float32:  # e.g. model.half()
            centred, sq, mean = (t.to(rows.device, torch.float32) for t in (centred, sq, mean))
        K = self.neighbours
        scores = torch.empty(n, 1, dtype=torch.float32, device=rows.device)
        step = self._chunk()
        for s in range(0, n, step):
            view = rows[s : s + step]
            x = view.float() - mean  # a new tensor: ``view`` is only read until the write-back
            d2 = torch.addmm(sq, x, centred.T, alpha=-2.0)  # |b|^2 - 2 x.b (+|x|^2, same per row)
            idx = d2.topk(K, dim=1, largest=False, sorted=False).indices  # [c, K]
            diff = centred[idx] - x.unsqueeze(1)  # [c, K, d]: neighbour - row, exact
            finite = torch.isfinite(x).all(-1, keepdim=True)
            mean_dist = diff.norm(dim=-1).mean(1, keepdim=True)
            scores[s : s + step] = torch.where(finite, -mean_dist, float("nan"))
            v = diff.mean(1)  # centroid - row
            norm = v.norm(dim=-1, keepdim=True)
            a = a_all[s : s + step] if per_row else a_all
            keep = finite & (norm > 0) & torch.isfinite(norm)
            if per_row:
                keep = keep & (a != 0)
            elif a == 0:
                continue
            new = view.float() + a * (v / norm)
            view.copy_(torch.where(keep, new.to(rows.dtype), view))
        return scores


def knn_fields(
    model: nn.Module,
    tokenizer,
    positive_texts: Sequence[str],
    layers: Sequence[int],
    *,
    k: int = 64,
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = False,
) -> dict[int, KNNField]:
    """One :class:`KNNField` per layer, its bank the positive texts' last-token activations.

    Activations are extracted as for training (:func:`svf.activations.last_token_activations`:
    each decoder layer's output at the last real token); the fields are put on the model's
    device. Steer with ``Steering(model, fields, {layer: alpha, ...})``.
    """
    check_model(model)
    check_tokenizer(tokenizer)
    if isinstance(positive_texts, (str, bytes)) or not hasattr(positive_texts, "__iter__"):
        check_texts(positive_texts, "positive_texts")  # raises, naming the argument
    texts = list(positive_texts)
    if not texts:
        raise SVFArgumentError("positive_texts is empty: the KNN bank needs at least one text")
    texts = check_texts(texts, "positive_texts")
    layers = layer_list(layers, "layers")
    if not layers:
        raise SVFArgumentError("layers is empty: give at least one layer")
    if len(set(layers)) != len(layers):
        raise SVFArgumentError(f"layers has duplicates: {layers}")
    check_layers(model, layers, "layers")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SVFArgumentError(f"k must be an integer >= 1, got {k!r}")
    check_int(batch_size, "batch_size", minimum=1)
    check_int(max_length, "max_length", minimum=1)
    check_bool(progress, "progress")
    acts = last_token_activations(model, tokenizer, texts, layers, batch_size=batch_size,
                                  max_length=max_length, desc="activations (knn bank)",
                                  progress=progress)
    device = next(model.parameters()).device
    return {layer: KNNField(acts[:, j], k=k).to(device) for j, layer in enumerate(layers)}
