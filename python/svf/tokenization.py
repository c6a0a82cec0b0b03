"""How every text reaches the model: chat or plain rendering, special tokens, left padding.

Rules (one place, used by activation extraction, generation and the evaluations):

* A text (a plain prompt, a pair text, or one rendered by a chat template) gets the special
  tokens the tokenizer puts in front of plain text (a BOS, for Gemma, Llama, Mistral), once:
  a text that already starts with them (a chat template that writes its own BOS) keeps them
  as they are. What the tokenizer adds is read from the tokenizer itself
  (:func:`special_tokens_added`), not from a list of model families.
* Nothing is appended at the end, whatever the tokenizer appends to plain text (an EOS): the
  text is continued or scored, and an EOS would end it.
* A continuation appended after a prompt (a likelihood completion, an answer) gets no special
  tokens at all (:func:`encode_continuations`).
* ``chat=None``: the chat template when the tokenizer has one, else plain text with one
  logged notice per tokenizer; ``chat=True`` without a template is an error; ``chat=False``
  is plain text (:func:`resolve_chat`).
* Batches are padded on the left (:func:`pad_left`), so every row's last prompt token is the
  last column.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from svf_kernels import SVFArgumentError

from .arguments import check_texts, check_tokenizer, show

__all__ = [
    "check_chat",
    "encode_continuations",
    "encode_prompts",
    "encode_texts",
    "format_prompts",
    "has_chat_template",
    "leading_special_ids",
    "pad_id",
    "pad_left",
    "resolve_chat",
    "special_tokens_added",
]

log = logging.getLogger(__name__)

#: A short text whose tokens are found inside its encoding with special tokens.
_PROBES = ("a", "Hello", "x y")

#: Tokenizers already told that they have no chat template (one notice each).
_noticed: weakref.WeakSet = weakref.WeakSet()
_noticed_ids: set[int] = set()  # tokenizers that cannot be weakly referenced


def check_chat(chat: object) -> bool | None:
    """``chat`` is True, False or None (None: the template when there is one)."""
    if chat is not None and not isinstance(chat, bool):
        raise SVFArgumentError(f"chat must be True, False or None, got {show(chat)}")
    return chat


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _notice_once(tokenizer: Any) -> None:
    """Log, once per tokenizer object, that prompts go to the model as plain text."""
    try:
        if tokenizer in _noticed:
            return
        _noticed.add(tokenizer)
    except TypeError:  # not weakly referenceable or not hashable
        if id(tokenizer) in _noticed_ids:
            return
        _noticed_ids.add(id(tokenizer))
    log.warning("the model's tokenizer (%s) has no chat template: prompts are given to the model "
                "as plain text (chat=False, or --no-chat on the command line, says so and silences "
                "this notice)",
                type(tokenizer).__name__)


def resolve_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Whether prompts are rendered with the chat template: ``chat``, or for None whether there is one."""
    check_chat(chat)
    if chat is None:
        if has_chat_template(tokenizer):
            return True
        _notice_once(tokenizer)
        return False
    if chat and not has_chat_template(tokenizer):
        raise SVFArgumentError(f"chat=True but the tokenizer ({type(tokenizer).__name__}) has no chat "
                               "template: pass chat=False (or None) for plain-text prompts")
    return chat


def format_prompts(tokenizer: Any, prompts: Sequence[str], chat: bool | None = None) -> list[str]:
    """Prompts as a user turn of the chat template, or as given (see :func:`resolve_chat`)."""
    check_tokenizer(tokenizer)
    prompts = check_texts(prompts, "prompts")
    if not resolve_chat(tokenizer, chat):
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      tokenize=False)
        for p in prompts
    ]


def _ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Token ids of each text, with or without the tokenizer's special tokens."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def special_tokens_added(tokenizer: Any) -> tuple[list[int], list[int]]:
    """``(leading, trailing)``: the ids the tokenizer puts before and after plain text, read by
    encoding a probe text with and without special tokens."""
    for probe in _PROBES:
        [bare], [full] = _ids(tokenizer, [probe], False), _ids(tokenizer, [probe], True)
        n = len(bare)
        for i in range(len(full) - n + 1):
            if n and full[i : i + n] == bare:
                return full[:i], full[i + n :]
    raise SVFArgumentError(f"cannot tell which special tokens the tokenizer ({type(tokenizer).__name__}) "
                           f"adds: none of {list(_PROBES)} encodes to its own tokens plus special ones")


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts in front of plain text (a BOS, or nothing)."""
    return special_tokens_added(tokenizer)[0]


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Each text's ids with the tokenizer's leading special tokens once and nothing appended;
    over ``max_length`` its own tokens are cut from the left (the leading ones stay)."""
    lead = leading_special_ids(tokenizer)
    if max_length is not None and max_length <= len(lead):
        raise SVFArgumentError(f"max_length must be > {len(lead)} (the tokenizer's leading special "
                               f"tokens), got {max_length}")
    out = []
    for ids in _ids(tokenizer, list(texts), False):
        body = ids[len(lead) :] if ids[: len(lead)] == lead else ids
        if max_length is not None and len(body) > max_length - len(lead):
            body = body[len(body) - (max_length - len(lead)) :]
        out.append(lead + body)
    return out


def encode_continuations(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of texts that continue a prompt (completions, answers): no special tokens."""
    return _ids(tokenizer, list(texts), False)


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token, else the EOS token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, T]`` long: the rows padded on the left with ``pad``."""
    T = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, T - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, T - len(r) :] = 1
    return ids, mask


def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of prompts as :func:`svf.generate` feeds them: rendered
    (:func:`format_prompts`), encoded (:func:`encode_texts`), padded on the left."""
    return pad_left(encode_texts(tokenizer, format_prompts(tokenizer, prompts, chat)), pad_id(tokenizer))
