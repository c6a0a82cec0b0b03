"""SVF fields served by stock vLLM, as a ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers).
It patches three places, each a no-op until fields are configured (``docs/SERVING.md``):
the input processor checks each request's ``extra_args["svf"]`` and salts its prefix cache;
the model runner wraps the steered decoder layers after loading the model (before vLLM
compiles it) and fills the per-token field ids and strengths before every forward.
Only :mod:`svf.vllm_plugin.vllm_hooks` imports vLLM.
"""

from __future__ import annotations


def register() -> None:
    """The entry point: install the hooks (idempotent; vLLM may call it more than once)."""
    from .vllm_hooks import install_hooks

    install_hooks()
