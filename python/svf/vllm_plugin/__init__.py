"""SVF fields served by stock vLLM, as a ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers).
On a vLLM the plugin is tested with, it patches the places listed in
:mod:`svf.vllm_plugin.vllm_hooks`, each a no-op until fields are configured
(``docs/SERVING.md``): the input processor checks each request's ``extra_args["svf"]`` and
salts its prefix cache; the model runner wraps the steered decoder layers after loading the
model (before vLLM compiles it), fills the per-token field ids and strengths before every
forward, and releases the fields when the engine shuts down. On any other vLLM it patches
nothing. Only :mod:`svf.vllm_plugin.vllm_hooks` imports vLLM.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register() -> None:
    """The entry point: install the hooks (once per process; vLLM may call it more than once).

    Raises only when fields are configured for a vLLM the plugin cannot patch (the engine then
    stops at start with the versions named); any other failure is logged and leaves vLLM as
    it is.
    """
    try:
        from .vllm_hooks import UnsupportedVLLMError, install
    except Exception as exc:  # noqa: BLE001 - a plugin must not break vLLM
        logger.warning("svf: the vLLM plugin did not load (%s: %s); it installs nothing",
                       type(exc).__name__, exc)
        return
    try:
        install()
    except UnsupportedVLLMError:
        raise
    except Exception as exc:  # noqa: BLE001
        logger.warning("svf: the vLLM plugin could not install its hooks (%s: %s); it installs "
                       "nothing", type(exc).__name__, exc)
