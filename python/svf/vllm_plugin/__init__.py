"""SVF fields served by stock vLLM, as a ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers).
On a vLLM the plugin is tested with, it patches the places listed in
:mod:`svf.vllm_plugin.vllm_hooks`, each a no-op until fields are configured
(``docs/SERVING.md``): the input processor checks each request's ``extra_args["svf"]`` and
salts its prefix cache; the scheduler admits at most ``max_entries`` entries of ``fields_dir``
among the running requests; the model runner wraps the steered decoder layers after loading the
model (before vLLM compiles it), fills the per-token field ids and strengths before every
forward, and releases the fields when the engine shuts down. On any other vLLM it patches
nothing. Only :mod:`svf.vllm_plugin.vllm_hooks` imports vLLM.
"""

from __future__ import annotations

import logging
import os

#: The environment variable that configures fields (:data:`svf.vllm_plugin.config.ENV_VAR`;
#: spelled here too, so a plugin that fails to import can still read it).
FIELDS_ENV_VAR = "SVF_VLLM_FIELDS"

logger = logging.getLogger(__name__)


def register() -> None:
    """The entry point: install the hooks (once per process; vLLM may call it more than once).

    Raises only when fields are configured and cannot be served: for a vLLM the plugin cannot
    patch (the engine then stops at start with the versions named), or, with fields in
    ``SVF_VLLM_FIELDS``, when the plugin fails to load or install (an engine that would serve
    every steered request unsteered must not start). Without configured fields any failure is
    logged and leaves vLLM as it is.
    """
    try:
        from .vllm_hooks import UnsupportedVLLMError, install
    except Exception as exc:  # noqa: BLE001 - a plugin must not break vLLM
        _stop_if_fields_configured("did not load", exc)
        logger.warning("svf: the vLLM plugin did not load (%s: %s); it installs nothing",
                       type(exc).__name__, exc)
        return
    try:
        install()
    except UnsupportedVLLMError:
        raise
    except Exception as exc:  # noqa: BLE001
        _stop_if_fields_configured("could not install its hooks", exc)
        logger.warning("svf: the vLLM plugin could not install its hooks (%s: %s); it installs "
                       "nothing", type(exc).__name__, exc)


def _stop_if_fields_configured(what: str, exc: Exception) -> None:
    """Fields given in the environment would go unserved: stop the engine at start."""
    if os.environ.get(FIELDS_ENV_VAR, "").strip():
        raise RuntimeError(f"svf: fields are configured ({FIELDS_ENV_VAR}) but the vLLM plugin "
                           f"{what}: {type(exc).__name__}: {exc}") from exc
