"""Which positions to steer (DESIGN.md §4), computed once per forward pass.

Default: during the prompt pass only the last real token of each row (padding-aware);
during decoding every newly generated token. Positions are absolute: the tracker learns the
past length from the KV cache (or from the attention mask's width), and recognises a
no-cache decoding step by its prompt prefix, so the same positions are steered with and
without a cache. With refresh ``K > 1`` the direction is recomputed at generated-token
steps ``0, K, 2K, ...`` (step 0 = last prompt token) and reused in between.
Option ``positions="all"``: every real (non-padding) token of every forward pass.
Option ``positions="last"``: the last position of every forward pass, decided without any
host logic (no tracker runs): the same positions as the default for left-padded decoding
with a KV cache and refresh 1, and the mode that traces under ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch

from svf_kernels import StepPlan, SVFArgumentError

POSITION_MODES = ("default", "all", "last")


def _past_length(cache: Any, mask: torch.Tensor | None, T: int) -> int:
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuples
        return int(cache[0][0].shape[-2])
    if mask is not None and mask.shape[1] > T:
        return int(mask.shape[1] - T)
    return 0


def _last_real(mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
    """Index of each row's last real token (works for left and right padding)."""
    if mask is None:
        return torch.full((B,), T - 1, dtype=torch.long)
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, -1).amax(1).cpu()


class PositionTracker:
    """Builds the :class:`StepPlan` of each forward pass of one steered model."""

    def __init__(self, refresh: int = 1, positions: str = "default") -> None:
        if not isinstance(refresh, int) or isinstance(refresh, bool) or refresh < 1:
            raise SVFArgumentError(f"refresh must be an int >= 1, got {refresh!r}")
        if positions not in POSITION_MODES:
            raise SVFArgumentError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if positions == "last" and refresh != 1:
            raise SVFArgumentError(f"positions='last' steers every forward pass afresh: refresh must be 1, got {refresh}")
        self.refresh, self.positions = refresh, positions
        self.plan: StepPlan | None = None
        self._last_only_plan: StepPlan | None = None
        self.past_length = 0
        self.reset()

    def reset(self) -> None:
        """Forget the prompt (the next forward pass starts a new sequence)."""
        self.prompt_len: int | None = None
        self.prompt_ids: torch.Tensor | None = None
        self.last_real: torch.Tensor | None = None

    def start_forward(
        self,
        input_ids: torch.Tensor | None,
        batch: int,
        length: int,
        attention_mask: torch.Tensor | None,
        cache: Any,
    ) -> StepPlan:
        """Compute and store the plan for a forward pass over ``[batch, length]`` tokens."""
        B, T = batch, length
        # A 2-D padding mask, or None: generate with a static cache passes prepared masks (a dict
        # of them, one per attention kind, for models with sliding-window and global layers),
        # and then every row's last token is the last column (left padding).
        is_2d = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2
        mask = attention_mask if is_2d else None
        s0 = _past_length(cache, mask, T)
        self.past_length = s0
        if self.positions == "all":
            real = mask[:, -T:].reshape(-1).bool().cpu() if mask is not None else torch.ones(B * T, dtype=torch.bool)
            self.plan = StepPlan(B, real.nonzero().flatten())
            return self.plan
        self._update_prompt(input_ids, B, T, mask, s0)
        self.plan = self._plan(B, T, s0)
        return self.plan

    def _update_prompt(self, ids, B: int, T: int, mask, s0: int) -> None:
        if s0 == 0:
            P = self.prompt_len
            continuing = (
                P is not None
                and ids is not None
                and self.prompt_ids is not None
                and self.prompt_ids.shape[0] == B
                and T > P
                and torch.equal(ids[:, :P].cpu(), self.prompt_ids)
            )
            if not continuing:
                self.prompt_len = T
                self.prompt_ids = ids.detach().cpu().clone() if ids is not None else None
                self.last_real = _last_real(mask[:, :T] if mask is not None else None, B, T)
        elif self.prompt_len is None or self.last_real is None or self.last_real.shape[0] != B:
            # A cache filled outside this steering: everything from here on counts as generated.
            self.prompt_len = s0
            self.prompt_ids = None
            self.last_real = torch.full((B,), -1, dtype=torch.long)

    def _last_only(self, B: int) -> StepPlan:
        """The plan "last position of every row, refreshed", cached per batch size."""
        if self._last_only_plan is None or self._last_only_plan.batch != B:
            self._last_only_plan = StepPlan(B, torch.arange(B), last_only=True)
        return self._last_only_plan

    def _plan(self, B: int, T: int, s0: int) -> StepPlan:
        P, last_real, K = self.prompt_len, self.last_real, self.refresh
        if K == 1 and T == 1 and s0 >= P:  # a decoding step: the new token of every row
            return self._last_only(B)
        t = s0 + torch.arange(T)
        is_last = t[None, :] == last_real[:, None]
        steer = is_last | (t >= P)[None, :]
        k = torch.where(is_last, 0, t[None, :] - P + 1)  # generated-token step, 0 = prompt end
        r = k % K
        refresh_mask = steer & (r == 0)
        if K == 1 and bool(refresh_mask[:, -1].all()) and int(refresh_mask.sum()) == B:
            return self._last_only(B)
        refresh = refresh_mask.reshape(-1).nonzero().flatten()
        if K == 1:
            return StepPlan(B, refresh)
        reuse_mask = steer & (r != 0)
        reuse = reuse_mask.reshape(-1).nonzero().flatten()
        anchor_k = k - r
        anchor_pos = torch.where(anchor_k == 0, last_real[:, None], P - 1 + anchor_k)
        rows = torch.arange(B)[:, None].expand(B, T)
        slot = torch.full((B * T,), -1, dtype=torch.long)
        slot[refresh] = torch.arange(refresh.numel())
        anchor_flat = (rows * T + (anchor_pos - s0).clamp(0, T - 1)).reshape(-1)[reuse]
        in_call = (anchor_pos >= s0).reshape(-1)[reuse]
        reuse_src = torch.where(in_call, B + slot[anchor_flat], rows.reshape(-1)[reuse])
        # The latest refreshed entry of each row becomes that row's stored displacement.
        refresh_rows = refresh // T
        store_src = torch.full((B,), -1, dtype=torch.long).scatter_reduce(
            0, refresh_rows, torch.arange(refresh.numel()), reduce="amax"
        )
        present = store_src >= 0
        return StepPlan(B, refresh, reuse, reuse_src, present.nonzero().flatten(), store_src[present])
