"""Run one vLLM engine on a job file and write what it generated (a subprocess of the tests).

Usage: ``python engine_job.py JOB.json OUT.json``. The job holds ``engine`` (``LLM`` keyword
arguments) and ``batches``: lists of ``{"prompt_token_ids": [...], "params": {...}}``
(``SamplingParams`` keywords), each batch one ``generate`` call. The output holds, per batch,
each request's generated token ids and prompt tokens read from the prefix cache, or the
batch's error text, and the start-up seconds.
Each engine runs in its own process so that tests stay independent and leave nothing behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(Path(job_path).read_text())
    t0 = time.perf_counter()
    out: dict = {"batches": []}
    try:
        llm = LLM(**job["engine"])
    except Exception as exc:  # noqa: BLE001 - reported to the test, which checks the text
        out["start_error"] = f"{type(exc).__name__}: {exc}"
        Path(out_path).write_text(json.dumps(out))
        return
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
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
