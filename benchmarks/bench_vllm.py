"""vLLM serving throughput with SVF fields: output tokens/s, steered vs a stock engine.

The default model (SmolLM2-135M-Instruct, fp32) in vLLM's default compiled mode (``--eager``:
no compilation, for a quick smoke run); greedy decoding of a fixed number of output tokens
(EOS ignored) from distinct fixed prompts, N concurrent requests = one ``LLM.generate`` call
with N prompts. Configurations:

* ``unsteered``: a stock engine with no fields configured (the plugin inert): the baseline;
* ``plugin-only``: the steered engine (fields loaded, layers wrapped), requests without an
  ``svf`` key: the same engine's own unsteered speed, a control that separates what steering
  costs from the difference between two engine processes;
* ``steered-3``: every request steered by ``three`` (random field, trained on layers 12-21,
  steering 16, 18, 20);
* ``steered-30``: every request steered by ``all`` (trained on and steering all 30 layers);
* ``static-30``: every request steered by ``static``, a static vector on all 30 layers (a
  ``.safetensors`` per-layer vector file served as ``{"vector": PATH}``: the same table op, a
  zero scorer);
* ``mixed``: requests i = 0, 1, 2, 3 (mod 4) steered by ``three``, by ``other`` (a second
  random field like ``three``), unsteered, unsteered.

``plugin-only`` and the three steered configurations share one engine serving all three
fields; the baseline runs in a second engine. Each engine lives in its own worker process (this script with
``--worker``) that runs one measurement per command over stdin/stdout, so both stay loaded
while only one computes at a time; the parent runs a warm-up round (whose tokens must show
the steering: steered requests differ from the same requests on the stock engine, requests
without an ``svf`` key equal them), then ``--repeats``
rounds, each timing every configuration at every request count in a rotated order, so the
engines alternate and see the same machine noise. Reported per configuration and request
count: the median tokens/s over rounds, its ratio to unsteered's median, and the medians of
the per-round ratios to unsteered and to plugin-only. Prefix caching is off unless ``--prefix-caching``: every round
computes its prompts again. Field weights are random: speed does not depend on them.

    python benchmarks/bench_vllm.py                            # compiled, 1, 8 and 32 requests
    python benchmarks/bench_vllm.py --eager --requests 1 8 --repeats 1 --tokens 16   # smoke
    python benchmarks/bench_vllm.py --plot-only benchmarks/results/vllm   # plot saved results

Run it in the vLLM environment (``.venv-vllm``); without matplotlib there, plot with
``--plot-only`` from an environment that has it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, random_scorer, write_csv

CONFIGS = ("unsteered", "plugin-only", "steered-3", "steered-30", "static-30", "mixed")
MODEL = "SmolLM2-135M-Instruct"
#: The throughput, as a fraction of the stock engine's, that steering every request should keep.
TARGET = 0.97
NUM_LAYERS, HIDDEN = 30, 576
#: name -> (seed, train layers, steering layers) of the served random fields
FIELDS = {
    "three": (1, tuple(range(12, 22)), (16, 18, 20)),
    "all": (2, tuple(range(NUM_LAYERS)), tuple(range(NUM_LAYERS))),
    "other": (3, tuple(range(12, 22)), (16, 18, 20)),
}
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the worker's own process
    "VLLM_NO_USAGE_STATS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def request_fields(config: str, n: int) -> list[str | None]:
    """The served field of each of ``n`` requests in ``config`` (None: unsteered)."""
    if config in ("unsteered", "plugin-only"):
        return [None] * n
    if config == "steered-3":
        return ["three"] * n
    if config == "steered-30":
        return ["all"] * n
    if config == "static-30":
        return ["static"] * n
    return [("three", "other", None, None)[i % 4] for i in range(n)]


def make_prompts(model_dir: Path, count: int, length: int) -> list[list[int]]:
    """``count`` distinct prompts of ``length`` token ids: windows of the tokenized evaluation
    prompts at different offsets (plain text, no chat template)."""
    from transformers import AutoTokenizer

    from svf.data import TEST_PROMPTS, VALIDATION_PROMPTS

    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = tok(" ".join(TEST_PROMPTS + VALIDATION_PROMPTS), add_special_tokens=False)["input_ids"]
    while len(stream) < length + count:
        stream = stream + stream
    step = max(1, (len(stream) - length) // count)
    prompts = [stream[i * step: i * step + length] for i in range(count)]
    if len({tuple(p) for p in prompts}) != count:
        raise RuntimeError("the prompt windows are not distinct; use fewer or shorter prompts")
    return prompts


def save_fields(folder: Path) -> dict[str, str | dict[str, str]]:
    """The random fields of :data:`FIELDS` (default scorer sizes) and the static vector
    ``static`` (random, all layers, a ``.safetensors`` per-layer file), saved under ``folder``;
    returns the plugin's ``fields`` mapping: name -> artifact path or ``{"vector": path}``."""
    import torch
    from safetensors.torch import save_file

    from svf.steering_field import SteeringField

    generator = torch.Generator().manual_seed(4)
    vectors = {str(i): torch.randn(HIDDEN, generator=generator) for i in range(NUM_LAYERS)}
    save_file(vectors, str(folder / "static.safetensors"))
    paths: dict[str, str | dict[str, str]] = {"static": {"vector": str(folder / "static.safetensors")}}
    for name, (seed, layers, steer) in FIELDS.items():
        scorer = random_scorer(HIDDEN, layers, seed=seed)
        n = len(layers)
        field = SteeringField(scorer, name, MODEL, NUM_LAYERS, steer, torch.full((n,), 100.0),
                              torch.randn(n, HIDDEN))
        paths[name] = str(field.save(folder / name))
    return paths


# ---------------------------------------------------------------- worker (one engine) ----

def worker(spec_path: str) -> None:
    """One engine: ``LLM(**spec["engine"])``, then one timed ``generate`` per command line.

    Replies go, one JSON line each, to the original stdout; everything vLLM prints is sent
    to stderr (the engine's log), so it cannot break the protocol.
    """
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    replies = os.fdopen(reply_fd, "w", buffering=1)

    def send(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    try:
        import vllm
        from vllm import LLM, SamplingParams

        llm = LLM(**spec["engine"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops
        send({"error": f"engine start: {type(exc).__name__}: {exc}"})
        return
    send({"ready": True, "start_s": time.perf_counter() - t0, "vllm": vllm.__version__})
    prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
    for line in sys.stdin:
        cmd = json.loads(line)
        params = []
        for name in cmd["fields"]:
            extra = {"svf": {"field": name, "strength": spec["strength"]}} if name else None
            params.append(SamplingParams(max_tokens=spec["tokens"], temperature=0.0,
                                         ignore_eos=True, extra_args=extra))
        try:
            t = time.perf_counter()
            out = llm.generate(prompts[: len(params)], params, use_tqdm=False)
            seconds = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001
            send({"error": f"generate: {type(exc).__name__}: {exc}"})
            continue
        ids = [list(r.outputs[0].token_ids) for r in out]
        reply = {"seconds": seconds, "output_tokens": sum(map(len, ids)),
                 "min_tokens": min(map(len, ids))}
        send({**reply, "token_ids": ids} if cmd.get("tokens") else reply)


# ------------------------------------------------------------- parent: worker handles ----

def _shm() -> set[str]:
    try:
        return {p for p in os.listdir("/dev/shm") if p.startswith(("vllm", "psm_", "sem."))}
    except FileNotFoundError:
        return set()


def _shm_in_use() -> set[str]:
    """``/dev/shm`` names some live process has open or mapped (another engine's files)."""
    used = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/"):
                        used.add(target[len("/dev/shm/"):])
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            used.update(line.split("/dev/shm/", 1)[1].split()[0] for line in maps
                        if "/dev/shm/" in line)
    return used


class Worker:
    """A worker process (own process group) serving one engine; :meth:`run` is one
    measurement. :meth:`close` stops it with its children and removes the shared-memory
    files it left."""

    def __init__(self, name: str, spec: dict, env: dict[str, str], folder: Path, log: Path,
                 timeout: float) -> None:
        self.name, self.log, self.timeout = name, log, timeout
        spec_path = folder / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        self.shm_before = _shm()
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        self._buf, self._busy = b"", True  # busy: starting, or answering a command
        try:
            ready = self._reply(timeout)
        except BaseException:
            self.close()
            raise
        self.start_s, self.vllm = ready["start_s"], ready["vllm"]

    def _reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"engine {self.name!r} gave no answer in {timeout:.0f} s; "
                                   f"log: {self.log}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"engine {self.name!r} exited (rc {self.proc.wait()}); "
                                       f"log tail:\n{self._tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self._busy = False
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"engine {self.name!r}: {reply['error']}\nlog tail:\n{self._tail()}")
        return reply

    def _tail(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def run(self, fields: list[str | None], tokens: bool = False) -> dict:
        """One ``generate`` of ``len(fields)`` requests: seconds and output token counts
        (``tokens``: also each request's token ids)."""
        cmd = {"fields": fields, "tokens": tokens}
        self._busy = True
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply(self.timeout)

    def close(self) -> None:
        try:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # EOF: an idle worker leaves its loop, stops vLLM
            if not self._busy:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker if still there, children
            self.proc.wait()
            self._log.close()
            leftover = _shm() - self.shm_before
            if leftover:
                leftover -= _shm_in_use()
            for name in leftover:
                Path("/dev/shm", name).unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so the workers are stopped as on Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------- results, plot ----

def summarize(rows: list[dict]) -> list[dict]:
    """Per configuration and request count: medians, and tokens/s relative to unsteered
    (ratio of medians; median of the per-round ratios) and to plugin-only (median of the
    per-round ratios: the same engine)."""
    out = []
    for n in sorted({r["requests"] for r in rows}):
        base = {r["repeat"]: r["tokens_per_s"] for r in rows
                if r["requests"] == n and r["config"] == "unsteered"}
        base_median = statistics.median(base.values())
        same = {r["repeat"]: r["tokens_per_s"] for r in rows
                if r["requests"] == n and r["config"] == "plugin-only"}
        for config in CONFIGS:
            sel = [r for r in rows if r["requests"] == n and r["config"] == config]
            if not sel:
                continue
            tps = statistics.median(r["tokens_per_s"] for r in sel)
            out.append({
                "config": config, "requests": n, "repeats": len(sel),
                "seconds_median": statistics.median(r["seconds"] for r in sel),
                "output_tokens": sel[0]["output_tokens"], "tokens_per_s_median": tps,
                "ratio_to_unsteered": tps / base_median,
                "paired_ratio_median": statistics.median(
                    r["tokens_per_s"] / base[r["repeat"]] for r in sel),
                "paired_ratio_to_plugin_only": statistics.median(
                    r["tokens_per_s"] / same[r["repeat"]] for r in sel) if same else float("nan"),
            })
    return out


def read_csv(path: Path) -> list[dict]:
    """A summary CSV written by this script, numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k != "config":
                try:
                    r[k] = int(v)
                except ValueError:
                    r[k] = float(v)
    return rows


def plot(summary: list[dict], path: Path, title: str) -> bool:
    """Tokens/s and ratio to unsteered vs request count, per configuration; False (and
    nothing written) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for config in CONFIGS:
        sel = sorted((r for r in summary if r["config"] == config), key=lambda r: r["requests"])
        if not sel:
            continue
        n = [r["requests"] for r in sel]
        ax.plot(n, [r["tokens_per_s_median"] for r in sel], marker="o", label=config)
        bx.plot(n, [r["ratio_to_unsteered"] for r in sel], marker="o", label=config)
    for axis in (ax, bx):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_xticks(sorted({r["requests"] for r in summary}))
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylabel("output tokens/s (median)")
    bx.set_ylabel("tokens/s / unsteered")
    bx.axhline(1.0, color="k", lw=0.8)
    bx.axhline(TARGET, color="r", lw=0.8, ls="--", label=f"target {TARGET:g}")
    ax.legend()
    bx.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def table(summary: list[dict]) -> str:
    """The summary as a Markdown table."""
    header = ("| requests | config | s per call | output tokens/s | x unsteered | paired x | "
              "paired x plugin-only |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['requests']} | {r['config']} | {r['seconds_median']:.3f} | "
              f"{r['tokens_per_s_median']:.1f} | {r['ratio_to_unsteered']:.3f} | "
              f"{r['paired_ratio_median']:.3f} | {r['paired_ratio_to_plugin_only']:.3f} |"
              for r in summary]
    return "\n".join(lines)


# ------------------------------------------------------------------------ parent ----

def steering_check(tokens: dict[tuple[str, int], list[list[int]]]) -> str:
    """What the warm-up's tokens show: steered requests must differ from the same requests
    unsteered (otherwise no steering happened and the timings mean nothing)."""
    parts = []
    for (config, n), out in sorted(tokens.items(),
                                   key=lambda kv: (kv[0][1], CONFIGS.index(kv[0][0]))):
        if config == "unsteered":
            continue
        base = tokens[("unsteered", n)]
        fields = request_fields(config, n)
        moved = [a != b for a, b in zip(out, base)]
        if not any(fields):  # plugin-only: no request steered, every one as stock vLLM
            if any(moved):
                raise RuntimeError(f"{config}, {n} requests: {sum(moved)} requests without an "
                                   "svf key differ from the stock engine's tokens")
            parts.append(f"{config}/{n}: {n}/{n} equal")
            continue
        steered = sum(m for m, f in zip(moved, fields) if f)
        if not steered:
            raise RuntimeError(f"{config}, {n} requests: no steered request's tokens differ "
                               "from unsteered; the fields were not applied")
        text = f"{config}/{n}: {steered}/{sum(map(bool, fields))} steered differ"
        if None in fields:
            same = sum(not m for m, f in zip(moved, fields) if not f)
            text += f", {same}/{fields.count(None)} unsteered equal"
        parts.append(text)
    return "; ".join(parts)


def measure(args: argparse.Namespace, folder: Path,
            workers: dict[str, Worker]) -> tuple[list[dict], str]:
    """Start both engines (into ``workers``, which the caller stops), run the warm-up round
    (its tokens checked by :func:`steering_check`) and the timed rounds; the raw rows and
    the check's summary."""
    from svf.models import prepare_default_model

    model_dir = prepare_default_model()
    prompts = make_prompts(model_dir, max(args.requests), args.prompt_tokens)
    fields = save_fields(folder)
    max_len, max_seqs = args.prompt_tokens + args.tokens + 16, max(args.requests)
    engine = {"model": str(model_dir), "dtype": "float32", "seed": 0,
              "enforce_eager": args.eager, "enable_prefix_caching": args.prefix_caching,
              "max_model_len": max_len, "max_num_seqs": max_seqs,
              # every prompt of a call prefilled in one step
              "max_num_batched_tokens": max(max_len, max_seqs * args.prompt_tokens)}
    common = {"prompts": prompts, "tokens": args.tokens, "strength": args.strength}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "SVF_VLLM"))}
    env.update(ENGINE_ENV, OMP_NUM_THREADS=str(args.threads))
    specs = {"unsteered": {**common, "engine": engine},
             "steered": {**common, "engine": {**engine,
                                              "additional_config": {"svf": {"fields": fields}}}}}
    for name, spec in specs.items():  # one after the other: start-up compiles
        print(f"starting the {name} engine ...", flush=True)
        workers[name] = Worker(name, spec, env, folder, args.out / f"engine_{name}.log",
                               args.timeout)
        print(f"  ready in {workers[name].start_s:.1f} s", flush=True)

    def one(config: str, n: int, tokens: bool = False) -> dict:
        w = workers["unsteered" if config == "unsteered" else "steered"]
        res = w.run(request_fields(config, n), tokens)
        if res["min_tokens"] != args.tokens:
            raise RuntimeError(f"{config}, {n} requests: a request made {res['min_tokens']} "
                               f"tokens, not {args.tokens}")
        return res

    warm = {(c, n): one(c, n, tokens=True)["token_ids"]
            for n, c in tqdm([(n, c) for n in args.requests for c in CONFIGS], desc="warm-up")}
    check = steering_check(warm)
    rows = []
    jobs = [(r, n, i) for r in range(1, args.repeats + 1) for n in args.requests
            for i in range(len(CONFIGS))]
    for r, n, i in tqdm(jobs, desc="measurements"):
        config = CONFIGS[(i + r) % len(CONFIGS)]  # rotated order, round by round
        res = one(config, n)
        rows.append({"config": config, "requests": n, "repeat": r, "seconds": res["seconds"],
                     "output_tokens": res["output_tokens"],
                     "tokens_per_s": res["output_tokens"] / res["seconds"]})
    return rows, check


def run(args: argparse.Namespace) -> tuple[list[dict], str, dict[str, Worker]]:
    """:func:`measure` with the fields in a temporary folder; the workers are stopped
    however it ends (SIGTERM too)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_vllm_")))
        started: dict[str, Worker] = {}

        def stop() -> None:
            failed: list[BaseException] = []
            for w in started.values():  # every one, even when closing another was interrupted
                try:
                    w.close()
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    failed.append(exc)
            if failed:
                raise failed[0]

        stack.callback(stop)
        rows, check = measure(args, folder, started)
    return rows, check, started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, nargs="+", default=[1, 8, 32],
                   help="concurrent requests per generate call")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (after a warm-up)")
    p.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--strength", type=float, default=0.25, help="relative steering strength")
    p.add_argument("--eager", action="store_true", help="enforce_eager: no compilation")
    p.add_argument("--prefix-caching", action="store_true", help="keep vLLM's prefix cache on")
    p.add_argument("--threads", type=int,
                   default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
                   help="OMP_NUM_THREADS of each engine (default: $OMP_NUM_THREADS, else all "
                        "cores)")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds an engine may take to start or to answer one measurement")
    p.add_argument("--out", type=Path, default=RESULTS / "vllm")
    p.add_argument("--plot-only", type=Path, metavar="DIR",
                   help="only plot the summary CSVs already in DIR")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.plot_only:
        for path in sorted(args.plot_only.glob("vllm_*_summary.csv")):
            png = path.with_name(path.name.replace("_summary.csv", ".png"))
            if not plot(read_csv(path), png, path.stem.removesuffix("_summary")):
                raise SystemExit("matplotlib is not installed in this environment")
            print(png)
        return 0
    if min(args.requests) < 1 or args.repeats < 1:
        p.error("--requests must be positive and --repeats at least 1")
    args.requests = sorted(set(args.requests))
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "eager" if args.eager else "compiled"
    t0 = time.perf_counter()
    try:
        rows, check, started = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the engines are stopped", file=sys.stderr)
        return 130
    summary = summarize(rows)
    stem = f"vllm_{MODEL}_cpu_{mode}"
    write_csv(rows, args.out / f"{stem}.csv")
    write_csv(summary, args.out / f"{stem}_summary.csv")
    title = f"vLLM {MODEL} fp32 on CPU ({mode}), {args.tokens} output tokens per request"
    plotted = plot(summary, args.out / f"{stem}.png", title)
    info = machine()
    print(f"\n{title}; {info['cpu']}, {args.threads} threads per engine, vLLM "
          f"{started['steered'].vllm}, torch {info['torch']}, commit {info['commit']}; "
          f"{args.prompt_tokens} prompt tokens, strength {args.strength}, {args.repeats} rounds "
          f"after a warm-up; engine start {started['unsteered'].start_s:.0f} s (unsteered), "
          f"{started['steered'].start_s:.0f} s (steered); {time.perf_counter() - t0:.0f} s in all")
    print(f"warm-up tokens vs unsteered: {check}")
    print("medians over rounds; x unsteered: ratio of median tokens/s; paired x: median of the "
          "per-round ratios; paired x plugin-only: the same against the steered engine's "
          "requests without an svf key")
    print(table(summary))
    print(f"\nwritten: {args.out / stem}.csv, {stem}_summary.csv"
          + (f", {stem}.png" if plotted else
             f" (no plot: matplotlib is not installed here; plot with "
             f"`.venv/bin/python benchmarks/bench_vllm.py --plot-only {args.out}`)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
