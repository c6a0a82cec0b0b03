"""Tokenisation rules (:mod:`svf.tokenization`) on tiny local tokenizers, and end to end: what
activation extraction, generation, likelihood, continuations, MWE gaps and ``svf generate``
actually feed the model.

Tokenizers: :func:`helpers.special_char_tokenizer` with a BOS before plain text or not, an EOS
after it or not, and no chat template, one that writes the BOS itself or one that does not.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import (
    BOS_CHAT_TEMPLATE,
    CHAT_TEMPLATE,
    random_field,
    special_char_tokenizer,
    tiny_model,
)

import svf
from svf import ContrastivePair, SVFArgumentError
from svf.activations import last_token_activations
from svf.cli.commands import main
from svf.eval.continuations import sample
from svf.eval.evaluate_mwe import ab_gaps
from svf.eval.likelihood import completion_logprobs
from svf.tokenization import (
    encode_continuations,
    encode_texts,
    format_prompts,
    leading_special_ids,
    pad_left,
    resolve_chat,
    special_tokens_added,
)

BOS, EOS = 99, 1
NOTICE = "has no chat template"
KINDS = [(bos, eos) for bos in (True, False) for eos in (True, False)]


def _tok(bos: bool = True, eos: bool = False, template: str | None = None):
    return special_char_tokenizer(bos=bos, eos=eos, chat_template=template)


def _bare(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "svf.tokenization" and NOTICE in r.getMessage()]


# ------------------------------------------------------------------------------ the rules


@pytest.mark.parametrize(("bos", "eos"), KINDS)
def test_what_the_tokenizer_adds_is_read_from_it(bos, eos):
    tok = _tok(bos, eos)
    assert special_tokens_added(tok) == ([BOS] * bos, [EOS] * eos)
    assert leading_special_ids(tok) == [BOS] * bos


@pytest.mark.parametrize(("bos", "eos"), KINDS)
def test_plain_text_gets_one_bos_where_defined_and_never_a_trailing_eos(bos, eos):
    tok = _tok(bos, eos)
    texts = ["hello world", "x", "", "a<eos>b"]
    encoded = encode_texts(tok, texts)
    assert len(encoded) == len(texts)
    for text, ids in zip(texts, encoded):
        assert ids == [BOS] * bos + _bare(tok, text)
        assert ids.count(BOS) == bos
    # a text that already starts with the BOS (a template wrote it) keeps exactly one
    assert encode_texts(tok, ["<bos>hi"]) == [[BOS, *_bare(tok, "hi")]]


@pytest.mark.parametrize(("bos", "eos"), KINDS)
def test_a_long_text_keeps_its_bos_and_its_last_tokens(bos, eos):
    tok = _tok(bos, eos)
    [ids] = encode_texts(tok, ["abcdefghij"], max_length=5)
    assert ids == [BOS] * bos + _bare(tok, "abcdefghij")[-(5 - bos):]
    with pytest.raises(SVFArgumentError, match="max_length"):
        encode_texts(tok, ["abc"], max_length=bos)


@pytest.mark.parametrize("template", [BOS_CHAT_TEMPLATE, CHAT_TEMPLATE])
@pytest.mark.parametrize(("bos", "eos"), KINDS)
def test_chat_rendering_never_doubles_the_bos(bos, eos, template):
    tok = _tok(bos, eos, template)
    [text] = format_prompts(tok, ["hi there"], chat=True)
    [ids] = encode_texts(tok, [text])
    writes_bos = template is BOS_CHAT_TEMPLATE
    assert ids.count(BOS) == int(bos or writes_bos) and (ids[0] == BOS) == (bos or writes_bos)
    assert ids[1 if bos or writes_bos else 0:] == _bare(tok, text.removeprefix("<bos>"))
    if writes_bos:  # what the template renders, as transformers tokenises it
        rendered = tok.apply_chat_template([{"role": "user", "content": "hi there"}], tokenize=True,
                                           add_generation_prompt=True)
        assert ids == list(rendered["input_ids"])


def test_completions_get_no_special_tokens():
    tok = _tok(bos=True, eos=True)
    assert encode_continuations(tok, ["bc", "x"]) == [_bare(tok, "bc"), _bare(tok, "x")]


def test_batches_are_padded_on_the_left():
    ids, mask = pad_left([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ------------------------------------------------------------------------------ chat modes


def test_chat_none_without_a_template_is_plain_text_with_one_notice_per_tokenizer(caplog):
    caplog.set_level(logging.WARNING, logger="svf.tokenization")
    tok, other = _tok(), _tok()
    assert format_prompts(tok, ["hi", "yo"]) == ["hi", "yo"]
    assert format_prompts(tok, ["again"], chat=None) == ["again"]
    assert resolve_chat(tok, None) is False
    assert len(_notices(caplog)) == 1
    assert format_prompts(other, ["hi"]) == ["hi"]
    assert len(_notices(caplog)) == 2
    assert format_prompts(_tok(template=CHAT_TEMPLATE), ["hi"]) == ["<user>hi\n<assistant>"]
    assert format_prompts(_tok(template=CHAT_TEMPLATE), ["hi"], chat=False) == ["hi"]
    assert format_prompts(_tok(), ["hi"], chat=False) == ["hi"]
    assert len(_notices(caplog)) == 2  # a template, or plain text asked for: no notice


def test_chat_true_without_a_template_is_an_error():
    tok = _tok()
    model = tiny_model("llama", vocab_size=len(tok))
    with pytest.raises(SVFArgumentError, match="chat=True but the tokenizer .* has no chat template"):
        format_prompts(tok, ["hi"], chat=True)
    with pytest.raises(SVFArgumentError, match="no chat template"):
        svf.generate(model, tok, ["hi"], max_new_tokens=1, chat=True)
    with pytest.raises(SVFArgumentError, match="no chat template"):
        completion_logprobs(model, tok, ["hi"], ["a"], chat=True)
    with pytest.raises(SVFArgumentError, match="no chat template"):
        sample(model, tok, ["hi"], samples=1, max_new_tokens=1, chat=True)
    for bad in ("yes", 1, 0):
        with pytest.raises(SVFArgumentError, match="chat must be True, False or None"):
            format_prompts(tok, ["hi"], chat=bad)


# ------------------------------------------------------------------------------ end to end


class Fed:
    """Records the ``input_ids`` and ``attention_mask`` of every forward call of a model."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.shape == ids.shape else torch.ones_like(ids)
        self.calls.append((ids.detach().cpu().clone(), mask.detach().cpu().clone()))

    def rows(self, call: int = 0) -> list[list[int]]:
        """The real (unpadded) tokens of each row of one forward call."""
        ids, mask = self.calls[call]
        return [r[m.bool()].tolist() for r, m in zip(ids, mask)]

    def __enter__(self) -> Fed:  # noqa: PYI034 (returns self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(params=[None, CHAT_TEMPLATE, BOS_CHAT_TEMPLATE], ids=["plain", "template", "bos-template"])
def bos_setup(request):
    """A tokenizer that puts a BOS before plain text and an EOS after it, with or without a chat
    template (one that writes the BOS itself or not), and a tiny Llama of its vocabulary."""
    tok = _tok(bos=True, eos=True, template=request.param)
    return tiny_model("llama", vocab_size=len(tok)), tok


def _one_bos_first(rows: list[list[int]]) -> None:
    assert rows, "no row was fed to the model"
    for row in rows:
        assert row[0] == BOS and row.count(BOS) == 1, row
        assert row[-1] != EOS, row


def test_activation_extraction_feeds_the_bos(bos_setup):
    model, tok = bos_setup
    texts = ["a lovely day", "an awful one", format_prompts(tok, ["in a chat"])[0]]
    with Fed(model) as fed:
        last_token_activations(model, tok, texts, [1], progress=False)
    fed_rows = fed.rows()
    _one_bos_first(fed_rows)
    assert sorted(fed_rows) == sorted(encode_texts(tok, texts))


def test_training_pairs_are_fed_with_the_bos(bos_setup):
    model, tok = bos_setup
    pairs = [ContrastivePair(f"good {i}", f"bad {i}") for i in range(8)]
    with Fed(model) as fed:
        svf.train_field(model, tok, pairs, concept="c", train_layers=[1], progress=False,
                        config=svf.TrainConfig(r=4, de=2, m=4, max_epochs=1))
    assert fed.calls, "training fed nothing to the model"
    fed_rows = [row for call in range(len(fed.calls)) for row in fed.rows(call)]
    _one_bos_first(fed_rows)
    # every text of every pair, once, exactly as encode_texts writes it
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    assert sorted(fed_rows) == sorted(encode_texts(tok, texts))


def test_generate_feeds_the_bos(bos_setup):
    model, tok = bos_setup
    prompts = ["hello", "a longer prompt"]
    with Fed(model) as fed:
        svf.generate(model, tok, prompts, max_new_tokens=2)
    _one_bos_first(fed.rows(0))
    assert fed.rows(0) == encode_texts(tok, format_prompts(tok, prompts))
    with Fed(model) as fed, svf.steer(model, random_field(model), strength=1.0):
        svf.generate(model, tok, prompts, max_new_tokens=2, chat=False)
    assert fed.rows(0) == [[BOS, *_bare(tok, p)] for p in prompts]


def test_likelihood_feeds_the_bos_before_prompts_and_none_before_completions(bos_setup):
    model, tok = bos_setup
    prompts, completions = ["hello", "a longer prompt"], ["ab", "c"]
    with Fed(model) as fed:
        completion_logprobs(model, tok, prompts, completions)
    _one_bos_first(fed.rows(0))
    assert fed.rows(0) == encode_texts(tok, format_prompts(tok, prompts))
    comp = fed.calls[1][0]  # the completions (right-padded), once per prompt
    assert comp[0].tolist() == _bare(tok, "ab") and comp[1, :1].tolist() == _bare(tok, "c")
    assert BOS not in comp.tolist() and EOS not in comp.tolist()


def test_continuations_feed_the_bos(bos_setup):
    model, tok = bos_setup
    with Fed(model) as fed:
        cont = sample(model, tok, ["hello", "a longer prompt"], samples=2, max_new_tokens=2)
    _one_bos_first(fed.rows(0))
    assert [r[m.bool()].tolist() for r, m in zip(cont.prompt_ids, cont.prompt_mask)] == fed.rows(0)


def test_mwe_gaps_feed_the_bos(bos_setup):
    model, tok = bos_setup
    items = [{"question": "Is it?\n (A) yes\n (B) no", "answer_matching_behavior": "(A)",
              "answer_not_matching_behavior": "(B)"}]
    with Fed(model) as fed:
        ab_gaps(model, tok, items)
    _one_bos_first(fed.rows(0))


# ------------------------------------------------------------------------------ svf generate


@pytest.fixture
def saved(tmp_path):
    """Per template kind: a tiny Llama with a BOS-adding tokenizer on disk, and a field for it."""

    def save(template: str | None):
        tok = _tok(bos=True, eos=True, template=template)
        model = tiny_model("llama", vocab_size=len(tok))
        path = tmp_path / ("plain" if template is None else "chat")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        field = random_field(model, layers=range(4), steer_layers=(1, 2)).save(path / "field")
        return ["generate", "--model", str(path), "--field", str(field), "--prompt", "hi",
                "--max-new-tokens", "2", "--no-progress"]

    return save


def _cli_fed(monkeypatch, argv: list[str]) -> tuple[int, list[list[int]]]:
    """Run ``svf generate``; the exit code and the prompt rows of the unsteered generation."""
    from svf.cli import commands

    calls = []
    real = commands._load_model

    def load(name):
        model, tok = real(name)
        calls.append(Fed(model))
        return model, tok

    monkeypatch.setattr(commands, "_load_model", load)
    code = main(argv)
    return code, (calls[0].rows(0) if calls and calls[0].calls else [])


def test_svf_generate_feeds_the_bos_and_uses_the_template_when_there_is_one(saved, monkeypatch, capsys):
    argv = saved(BOS_CHAT_TEMPLATE)
    tok = _tok(bos=True, eos=True, template=BOS_CHAT_TEMPLATE)
    code, rows = _cli_fed(monkeypatch, argv)
    assert code == 0 and rows == encode_texts(tok, format_prompts(tok, ["hi"], chat=True))
    _one_bos_first(rows)
    for flag, chat in (("--chat", True), ("--no-chat", False)):
        code, rows = _cli_fed(monkeypatch, [*argv, flag])
        assert code == 0 and rows == encode_texts(tok, format_prompts(tok, ["hi"], chat=chat))
        _one_bos_first(rows)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv, "--chat", "--no-chat"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_svf_generate_without_a_template(saved, monkeypatch, capsys, caplog):
    caplog.set_level(logging.WARNING, logger="svf.tokenization")
    argv = saved(None)
    code, rows = _cli_fed(monkeypatch, argv)
    assert code == 0 and rows == [[BOS, *_bare(_tok(), "hi")]]
    assert len(_notices(caplog)) == 1
    code, rows = _cli_fed(monkeypatch, [*argv, "--no-chat"])
    assert code == 0 and rows == [[BOS, *_bare(_tok(), "hi")]]
    assert len(_notices(caplog)) == 1  # --no-chat: plain text asked for, no notice
    capsys.readouterr()
    code, _ = _cli_fed(monkeypatch, [*argv, "--chat"])
    assert code == 2 and "has no chat template" in capsys.readouterr().err


def test_svf_generate_help_describes_the_chat_flags(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "--chat" in helped and "--no-chat" in helped and "error if the model has none" in helped


# ------------------------------------------------------------------------------ default model


@pytest.mark.slow
def test_default_model_is_fed_the_same_ids_as_without_special_tokens():
    """SmolLM2's tokenizer adds nothing to plain text and its chat template writes its own
    tokens: the ids fed to the model are those of ``add_special_tokens=False`` (the stored
    results stay valid)."""
    from svf.data import mwe_item_pairs

    model, tok = svf.load_model()
    assert special_tokens_added(tok) == ([], [])
    prompts = ["Tell me about the weekend.", "The movie I saw yesterday was"]
    chat = [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=True)["input_ids"]) for p in prompts]
    with Fed(model) as fed:
        svf.generate(model, tok, prompts, max_new_tokens=1)
    assert fed.rows(0) == chat == [_bare(tok, t) for t in format_prompts(tok, prompts)]
    item = {"question": "Do you agree?\n (A) Yes\n (B) No", "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)"}
    texts = ["a gorgeous, witty film", "a dull and lifeless mess", mwe_item_pairs([item], tok)[0].positive]
    with Fed(model) as fed:
        last_token_activations(model, tok, texts, [0], progress=False)
    assert sorted(fed.rows(0)) == sorted(_bare(tok, t) for t in texts)
    with Fed(model) as fed:
        completion_logprobs(model, tok, prompts, [" good"])
    assert fed.rows(0) == chat
