"""Run one vLLM engine on a job file and write what it generated (a subprocess of the tests).

Usage: ``python engine_job.py JOB.json OUT.json``. The job holds ``engine`` (``LLM`` keyword
arguments) and ``batches``: lists of ``{"prompt_token_ids": [...], "params": {...}}``
(``SamplingParams`` keywords), each batch one ``generate`` call. The output holds, per batch,
each request's generated token ids and prompt tokens read from the prefix cache, or the
batch's error text; the start-up seconds; what the plugin's checks find in the installed vLLM
(``svf_check``: its version, the patch targets found as expected and the problems with the
others); the plugin's hooks found installed (``svf_hooks``); and the number of tables the
steering op finds before and after the engine shut down (``svf_tables``,
``svf_tables_after_shutdown``; tables of this process only).
Each engine runs in its own process so that tests stay independent and leave nothing behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _plugin_check() -> dict:
    from vllm.version import __version__

    from svf.vllm_plugin import vllm_hooks

    found, problems = vllm_hooks.check_targets()
    return {"version": __version__, "problems": problems,
            "found": [f"{t.module}.{t.name}" for t, _, _ in found]}


def main(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    from svf.vllm_plugin import steer_op, vllm_hooks

    job = json.loads(Path(job_path).read_text())
    t0 = time.perf_counter()
    out: dict = {"batches": []}
    try:
        llm = LLM(**job["engine"])
    except Exception as exc:  # noqa: BLE001 - reported to the test, which checks the text
        out["start_error"] = f"{type(exc).__name__}: {exc}"
        out["svf_check"] = _plugin_check()
        Path(out_path).write_text(json.dumps(out))
        return
    out["svf_check"] = _plugin_check()
    out["start_s"] = time.perf_counter() - t0
    for batch in job["batches"]:
        prompts = [{"prompt_token_ids": r["prompt_token_ids"]} for r in batch]
        params = [SamplingParams(**r["params"]) for r in batch]
        try:
            results = llm.generate(prompts, params, use_tqdm=False)
            out["batches"].append({"token_ids": [list(r.outputs[0].token_ids) for r in results],
                                   "cached": [r.num_cached_tokens for r in results]})
        except Exception as exc:  # noqa: BLE001
            out["batches"].append({"error": f"{type(exc).__name__}: {exc}"})
    out["svf_hooks"] = vllm_hooks.installed_hooks()
    out["svf_tables"] = len(steer_op._REGISTRY)
    llm.llm_engine.engine_core.shutdown()
    out["svf_tables_after_shutdown"] = len(steer_op._REGISTRY)
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
