"""The plugin and the installed vLLM: the version lies in the tested range and every method the
plugin patches exists with the parameters it expects (an upgrade of vLLM fails here first);
on a vLLM outside the range, configured fields stop the engine at start with the versions
named, offline and in the server (whose API server process has not seen the configuration
when vLLM loads its plugins: its engine core stops)."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from conftest import (
    OUT_OF_RANGE_VLLM,
    out_of_range_env,
    run_engine,
    run_process,
    save_random_fields,
)

from svf.vllm_plugin.vllm_hooks import PATCHES, TESTED_VLLM, in_tested_range

pytestmark = pytest.mark.slow


def _fields(folder) -> dict:
    return save_random_fields(folder, 30, 576, {"a": (0, range(12, 22), (16, 18, 20))})


@pytest.fixture(scope="module")
def out_of_range_start(tmp_path_factory, default_model_dir) -> dict:
    """An offline engine with fields, its plugin told vLLM ``OUT_OF_RANGE_VLLM``; the job also
    reports what the plugin's checks find in the installed vLLM (``svf_check``)."""
    folder = tmp_path_factory.mktemp("vllm-compat")
    engine = {"model": str(default_model_dir), "dtype": "float32", "enforce_eager": True,
              "max_model_len": 256, "additional_config": {"svf": {"fields": _fields(folder)}}}
    return run_engine(folder, engine, [[{"prompt_token_ids": [1, 2, 3], "params": {"max_tokens": 2}}]],
                      env=out_of_range_env(), timeout=300)


def test_installed_vllm_is_in_the_tested_range(out_of_range_start):
    check = out_of_range_start["svf_check"]
    assert in_tested_range(check["version"]), (
        f"vLLM {check['version']} is outside TESTED_VLLM ({TESTED_VLLM}): check the patch "
        "targets, then widen it")


def test_every_patch_target_has_the_expected_signature(out_of_range_start):
    check = out_of_range_start["svf_check"]
    assert check["problems"] == [], check["problems"]
    assert check["found"] == [f"{t.module}.{t.name}" for t in PATCHES]


def _names_both_versions(text: str) -> bool:
    return f"vLLM {OUT_OF_RANGE_VLLM} is outside" in text and TESTED_VLLM in text


def test_out_of_range_with_fields_stops_the_engine_at_start(out_of_range_start):
    error = out_of_range_start.get("start_error", "")
    assert error.startswith("UnsupportedVLLMError") and _names_both_versions(error), error


def test_out_of_range_server_with_fields_stops_at_start(tmp_path, default_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(default_model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "256",
           "--additional-config", json.dumps({"svf": {"fields": _fields(tmp_path)}})]
    log = tmp_path / "server.log"
    rc = run_process(cmd, out_of_range_env(VLLM_ENABLE_V1_MULTIPROCESSING="1"), 300, log)
    text = log.read_text()
    assert rc != 0, f"the server started with fields on vLLM {OUT_OF_RANGE_VLLM}:\n{text[-3000:]}"
    assert "UnsupportedVLLMError" in text and _names_both_versions(text), text[-3000:]
