"""vLLM tests: they run in the second environment (``make vllm``), each engine in a subprocess.

The test process never imports vLLM; it writes a job, runs ``engine_job.py`` (or ``vllm
serve``) in a new process group with a deadline, reads the result and removes whatever the
engine left in ``/dev/shm``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/helpers.py: tiny models, random fields

from helpers import random_field

from svf.models import prepare_default_model

ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the job's own process
    "OMP_NUM_THREADS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _shm() -> set[str]:
    try:
        return {p for p in os.listdir("/dev/shm") if p.startswith(("vllm", "psm_", "sem."))}
    except FileNotFoundError:
        return set()


# A version outside the plugin's tested range, and what makes the plugin see it.
OUT_OF_RANGE_VLLM = "0.31.0"


def engine_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "SVF_VLLM"))}
    env.update(ENGINE_ENV)
    env.update(extra)
    return env


def out_of_range_env(**extra: str) -> dict[str, str]:
    """``engine_env`` for processes whose svf plugin sees vLLM ``OUT_OF_RANGE_VLLM``
    (``fake_vllm_version/sitecustomize.py``)."""
    path = os.pathsep.join(p for p in (str(HERE / "fake_vllm_version"),
                                       os.environ.get("PYTHONPATH")) if p)
    return engine_env(PYTHONPATH=path, SVF_TEST_VLLM_VERSION=OUT_OF_RANGE_VLLM, **extra)


def run_process(cmd: list[str], env: dict[str, str], timeout: float, log: Path) -> int:
    """Run ``cmd`` in its own process group, killed (with its children) at the deadline;
    shared-memory files it created are removed afterwards."""
    before = _shm()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{cmd[:3]} ran over {timeout} s; log: {log.read_text()[-3000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftover workers
            except ProcessLookupError:
                pass
            for name in _shm() - before:
                Path("/dev/shm", name).unlink(missing_ok=True)


def run_engine(tmp_path: Path, engine: dict, batches: list, *, timeout: float = 600,
               env: dict[str, str] | None = None, name: str = "job") -> dict:
    """One engine: ``LLM(**engine)`` then ``generate`` per batch; returns engine_job's output
    (with ``log``: what the process printed)."""
    job, out, log = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json", tmp_path / f"{name}.log"
    job.write_text(json.dumps({"engine": engine, "batches": batches}))
    rc = run_process([sys.executable, str(HERE / "engine_job.py"), str(job), str(out)],
                     env or engine_env(), timeout, log)
    text = log.read_text()
    assert rc == 0 and out.exists(), f"engine job failed (rc {rc}):\n{text[-4000:]}"
    result = json.loads(out.read_text())
    result["log"] = text
    return result


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return prepare_default_model()


# Random fields' norms are scaled to a few tens, about the default model's hidden-state norms,
# so that strengths of about 1 move its text (a served strength is at most MAX_STRENGTH).
NORM_SCALE = 20.0


def save_random_fields(folder: Path, num_layers: int, hidden_size: int, specs: dict) -> dict:
    """Random fields (``name: (seed, train_layers, steer_layers)``) saved under ``folder``;
    returns name -> artifact path."""
    shape = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=num_layers,
                                                               hidden_size=hidden_size))
    paths = {}
    for name, (seed, layers, steer) in specs.items():
        field = random_field(shape, layers=list(layers), steer_layers=steer, seed=seed,
                             concept=name, r=16, de=4, m=32)
        field.mean_norms = field.mean_norms * NORM_SCALE
        paths[name] = str(field.save(folder / name))
    return paths
