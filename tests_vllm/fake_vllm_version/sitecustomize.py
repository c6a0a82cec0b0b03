"""On ``PYTHONPATH`` with ``$SVF_TEST_VLLM_VERSION`` set, every Python process (the engine's
own, an API server and its engine core) starts with the svf plugin seeing that vLLM version:
how the tests run a vLLM outside the plugin's tested range."""

import os

_VERSION = os.environ.get("SVF_TEST_VLLM_VERSION")
if _VERSION:
    from svf.vllm_plugin import vllm_hooks

    vllm_hooks.vllm_version = lambda: _VERSION
