"""README.md runs as written and links nothing outside the repository.

Every ```python block is executed, in order, in one namespace that starts empty, in a
temporary working directory, on the default model: a block may use the names of an earlier
block and nothing else, so the README needs no hidden setup. Commands that must not run here
are ```bash blocks; any other fence language is refused, so no example is skipped unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE_LANGUAGES = {"python", "bash"}


def _fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, first line number of the code, code)`` of every fenced block, in order."""
    blocks, lines, start, language = [], text.splitlines(keepends=True), None, ""
    for number, line in enumerate(lines, 1):
        if not line.startswith("```"):
            continue
        if start is None:
            start, language = number + 1, line[3:].strip()
        else:
            blocks.append((language, start, "".join(lines[start - 1 : number - 1])))
            start = None
    assert start is None, f"README.md: the fence opened at line {start - 1} is never closed"
    return blocks


def _prose(text: str) -> str:
    """The README without its fenced blocks (code is not a link)."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_fences_are_python_or_bash():
    languages = [language for language, _, _ in _fenced_blocks(README.read_text())]
    assert "python" in languages
    assert set(languages) <= FENCE_LANGUAGES, f"fence languages {languages}: use python (run) or bash"


def test_readme_links_stay_in_the_repository_and_exist():
    """Markdown links (not URLs or anchors) and backticked ``../`` paths stay inside the
    repository; every link target exists."""
    prose = _prose(README.read_text())
    links = [t.split("#", 1)[0] for t in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose)
             if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert links, "README.md has no relative link"
    for target in links:
        assert not target.startswith("/"), f"absolute link {target!r}: link relative to README.md"
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), f"link {target!r} leaves the repository"
        assert path.exists(), f"link {target!r}: no such file in the repository"
    for target in re.findall(r"`(\.\./[^`\s]*)`", prose):
        assert (ROOT / target).resolve().is_relative_to(ROOT), f"path {target!r} leaves the repository"


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    from svf import generate, steer

    blocks = [(start, code) for language, start, code in _fenced_blocks(README.read_text())
              if language == "python"]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    for start, code in blocks:
        # padded so that a traceback names the README's own line numbers
        exec(compile("\n" * (start - 1) + code, str(README), "exec"), namespace)  # noqa: S102 (our README)
    out = capsys.readouterr().out

    # Train, steer, generate
    assert "unsteered:" in out and "positive:" in out and "negative:" in out
    assert (tmp_path / "runs" / "sentiment" / "field.safetensors").is_file()

    # Serving: one prompt, one batch, a row per request
    rows = namespace["rows"]
    assert list(rows) == ["positive", None, "formal", "positive+formal", "positive-caa"]
    unsteered = rows[None]
    assert unsteered.strip(), "the unsteered row is empty"
    for name in ("positive", "formal", "positive+formal", "positive-caa"):
        assert rows[name] != unsteered, f"row {name!r} is not steered"
    assert rows["positive+formal"] not in (rows["positive"], rows["formal"])
    for name, row in rows.items():
        assert f"{name or 'unsteered'}: {row}" in out
    assert not namespace["serving"].attached
    # the unsteered row is exactly plain greedy generation of the same prompt
    n_new = namespace["out"].shape[1] - namespace["ids"].shape[1]
    plain = generate(namespace["model"], namespace["tokenizer"], [namespace["prompt"]], max_new_tokens=n_new)
    assert plain == [unsteered]
    # the control vector read back from GGUF steers as the field's CAA vector at that strength
    assert (tmp_path / "runs" / "positive-caa.gguf").is_file()
    with steer(namespace["model"], namespace["sentiment"], method="caa", strength=0.15):
        caa = generate(namespace["model"], namespace["tokenizer"], [namespace["prompt"]],
                       max_new_tokens=n_new)
    assert caa == [rows["positive-caa"]]


def test_readme_svf_commands_parse(tmp_path, monkeypatch):
    """Every ``svf ...`` line of the README's bash blocks is a valid command line (options and
    values the CLI accepts), so the README matches ``svf --help``. Files the commands read are
    made empty-but-valid in a temporary directory; nothing is run."""
    import shlex

    from svf.cli.commands import parse_args

    monkeypatch.chdir(tmp_path)
    lines = [line.split("#", 1)[0].strip()
             for language, _, code in _fenced_blocks(README.read_text()) if language == "bash"
             for line in code.splitlines() if line.strip().startswith("svf ")]
    assert len(lines) >= 4
    for line in lines:
        argv = shlex.split(line)[1:]
        if "--data" in argv:  # the JSONL file it names must exist to parse
            (tmp_path / argv[argv.index("--data") + 1]).write_text(
                '{"positive": "a", "negative": "b"}\n')
        parse_args(argv)  # exits with status 2 (SystemExit) on anything the CLI refuses
