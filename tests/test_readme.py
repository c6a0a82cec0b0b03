"""The README's Python example runs verbatim (on the default model)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102 (our README)
    out = capsys.readouterr().out
    assert "unsteered:" in out and "positive:" in out and "negative:" in out
    assert (tmp_path / "runs" / "sentiment" / "field.safetensors").exists()
