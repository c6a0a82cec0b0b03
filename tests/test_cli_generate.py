"""``svf generate``: which score is printed beside which token, the progress bar, and the help
text of every command-line option."""

from __future__ import annotations

import argparse
import ast
import re

import pytest
import torch
from helpers import random_field, tiny_model

from svf.cli.commands import SCORE_MEANING, build_parser, main
from svf.generation import TokenProgress, format_prompts, generate_ids
from svf.steering import steer

NEW_TOKENS = 6
STRENGTH = 2.0
ROW = re.compile(r"^\s*(\d+)  (.+?) +([+-]\d+\.\d+|nan)   (.+?) +([+-]\d+\.\d+|nan)$")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, char_tok):
    """A tiny Llama and its tokenizer on disk, and a random field for it (steering layers 1, 2)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", vocab_size=len(char_tok))
    model.save_pretrained(path)
    char_tok.save_pretrained(path)
    field = random_field(model, layers=range(4), steer_layers=(1, 2))
    field_path = field.save(path / "field")
    return model, char_tok, field, path, field_path


def _recorded(model, field, prompt: torch.Tensor, **strength) -> tuple[list[int], dict[int, float]]:
    """Greedy tokens (one more than the CLI prints) and the score that steering recorded at each
    absolute position while generating them."""
    with steer(model, field, record_scores=True, **strength) as s, torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=NEW_TOKENS + 1, do_sample=False, pad_token_id=0)
    scores = {t: float(sc[0]) for _, t, sc in s.scores_by_position()}
    return out[0, prompt.shape[1]:].tolist(), scores


def _rows(printed: str) -> list[tuple[str, float, str, float]]:
    rows = [ROW.match(line) for line in printed.splitlines()]
    return [(ast.literal_eval(m[2]), float(m[3]), ast.literal_eval(m[4]), float(m[5]))
            for m in rows if m]


def test_each_token_is_printed_with_the_score_of_its_own_position(setup, capsys):
    model, tok, field, path, field_path = setup
    code = main(["generate", "--model", str(path), "--field", str(field_path), "--prompt", "hello",
                 "--strength", str(STRENGTH), "--max-new-tokens", str(NEW_TOKENS)])
    assert code == 0
    printed = capsys.readouterr().out
    text = format_prompts(tok, ["hello"])[0]
    prompt = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    P = prompt.shape[1]
    rows = _rows(printed)
    assert len(rows) == NEW_TOKENS
    for column, strength in ((0, {"alpha": 0.0}), (2, {"strength": STRENGTH})):
        tokens, score_at = _recorded(model, field, prompt, **strength)
        # the score of position P + k was recorded when the model read token k to produce k + 1
        assert sorted(score_at) == list(range(P - 1, P + NEW_TOKENS))
        for k, row in enumerate(rows):
            assert row[column] == tok.decode([tokens[k]])
            assert row[column + 1] == pytest.approx(score_at[P + k], abs=0.006)
        # the check can tell the token's own position from the one before it
        assert any(abs(score_at[P + k] - score_at[P + k - 1]) > 0.05 for k in range(NEW_TOKENS))


def test_the_header_and_help_say_what_the_score_is(setup, capsys):
    _, _, field, path, field_path = setup
    assert main(["generate", "--model", str(path), "--field", str(field_path), "--prompt", "hi",
                 "--max-new-tokens", "2", "--layers", "2,3"]) == 0
    header = " ".join(capsys.readouterr().out.split())
    assert " ".join(SCORE_MEANING.format(concept=field.concept, layer=2).split()) in header
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "own position" in helped and "+ = more" in helped and "logit" in helped


@pytest.mark.parametrize("enabled", [True, False, None])
def test_the_progress_bar_does_not_change_the_tokens(setup, enabled):
    model, tok, *_ = setup
    prompt = tok("abc", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 9,
                  "do_sample": False, "pad_token_id": 0}
        plain = model.generate(input_ids=prompt, **kwargs)
        bar = TokenProgress(9, enabled=enabled, delay=0.0)
        streamed = model.generate(input_ids=prompt, streamer=bar, **kwargs)
    assert torch.equal(streamed, plain)
    if enabled:
        assert bar.bar.n == 9  # one step per generated token, none for the prompt
    ids = generate_ids(model, prompt, max_new_tokens=9, pad_token_id=0, progress=enabled)
    assert torch.equal(ids, plain)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands(build_parser())))
def test_every_option_has_help(command):
    """Each option of each ``svf`` subcommand says what it does (``--help`` is argparse's own)."""
    parser = _subcommands(build_parser())[command]
    missing = [a.option_strings[0] for a in parser._actions
               if not isinstance(a, argparse._HelpAction)
               and (not a.help or not a.help.strip() or a.help == argparse.SUPPRESS)]
    assert not missing, f"svf {command}: options without help: {missing}"


@pytest.mark.parametrize("command", ["generate", "demo", "eval", "prepare"])
def test_help_gives_each_default(command):
    """An option with a default value names it in its help."""
    parser = _subcommands(build_parser())[command]
    silent = [a.option_strings[0] for a in parser._actions
              if a.default not in (None, False, argparse.SUPPRESS)
              and "default" not in (a.help or "")]
    assert not silent, f"svf {command}: help does not give the default of {silent}"
