"""Progress bars go to stderr only when it is a terminal (``svf.progress.progress_bar``): a pipe
or a CI log gets no carriage-return frames from ``svf train``, the library's training, activation,
generation and likelihood loops; ``progress=True`` shows a bar anywhere and ``--no-progress`` /
``progress=False`` none."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from helpers import tiny_model

from svf.activations import last_token_activations
from svf.cli.commands import main
from svf.data import ContrastivePair
from svf.eval.likelihood import completion_logprobs
from svf.generation import TokenProgress
from svf.training import TrainConfig, train_field

PAIRS = [ContrastivePair(f"good day {i} fine", f"bad night {i} awful") for i in range(24)]
SMALL = TrainConfig(r=8, de=3, m=12, max_epochs=3, patience=3)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def model(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok))


def _train_argv(tiny_dir, tmp_path) -> list[str]:
    return ["train", "--model", str(tiny_dir), "--pairs", "12", "--layers", "0-3", "--max-epochs", "3",
            "--out", str(tmp_path / "field")]


def test_svf_train_writes_no_bars_into_a_pipe(tiny_dir, tmp_path):
    run = subprocess.run([sys.executable, "-m", "svf.cli", *_train_argv(tiny_dir, tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False)  # stdout, stderr: pipes
    assert run.returncode == 0, run.stderr
    assert "linear(CAA)" in run.stdout
    assert "\r" not in run.stderr and "it/s" not in run.stderr, run.stderr
    assert "train scorer" not in run.stderr and "activations" not in run.stderr, run.stderr


def test_svf_train_shows_bars_on_a_terminal_unless_told(tiny_dir, tmp_path, monkeypatch):
    for extra, shown in (([], True), (["--no-progress"], False)):
        err = _Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        assert main([*_train_argv(tiny_dir, tmp_path), *extra]) == 0
        monkeypatch.undo()
        text = err.getvalue()
        assert ("train scorer" in text and "activations (train)" in text) == shown, (extra, text)
        assert ("\r" in text) == shown


def test_library_loops_show_a_bar_only_on_a_terminal_or_when_asked(model, char_tok, capsys, monkeypatch):
    def bars(**progress) -> str:
        capsys.readouterr()
        train_field(model, char_tok, PAIRS, concept="c", train_layers=[1, 2], config=SMALL, **progress)
        last_token_activations(model, char_tok, ["a b", "c d e"], [1], batch_size=1, desc="acts", **progress)
        completion_logprobs(model, char_tok, ["hi", "yo"], ["a", "b"], batch_size=2, chat=False, **progress)
        token = TokenProgress(3, desc="tokens", delay=0, enabled=progress.get("progress"))
        for _ in range(3):
            token.put(None)
        token.end()
        return capsys.readouterr().err

    assert bars() == ""  # stderr is captured, no terminal: nothing
    assert bars(progress=False) == ""
    shown = bars(progress=True)
    for desc in ("activations (train)", "train scorer", "acts", "completion likelihoods", "tokens"):
        assert desc in shown, (desc, shown)
    monkeypatch.setattr(sys, "stderr", _Terminal())  # a terminal: the default shows them
    train_field(model, char_tok, PAIRS, concept="c", train_layers=[1, 2], config=SMALL)
    assert "train scorer" in sys.stderr.getvalue()
