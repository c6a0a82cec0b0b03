"""The places the plugin hooks into vLLM (the only module that imports it).

* ``InputProcessor.process_inputs`` (front end, per request): checks
  ``extra_args["svf"]`` against the served field names, failing the request with a
  ``VLLMValidationError`` (HTTP 400) that names the problem, and salts a steered request's
  prefix cache with its steering, so no steered request reads KV computed under other
  steering (or none), and no unsteered one reads steered KV.
* ``load_model`` of the V1 model runners (GPU and CPU, each worker): loads the fields and
  wraps the steered decoder layers before vLLM compiles or captures the model.
* ``GPUModelRunner._prepare_inputs`` (V1, also the CPU runner's, each step): fills the
  per-token field ids and strengths from the persistent batch.

The V2 model runner (vLLM's GPU default) is refused with a message when fields are served.
"""

from __future__ import annotations

import functools
import logging

from svf_kernels import SVFArgumentError

from ..hf import decoder_layers
from .config import served_fields
from .request_params import SteerRequest, parse_request
from .served_fields import ServedFields

logger = logging.getLogger(__name__)
_INSTALLED = False


def _field_names(vllm_config) -> frozenset[str]:
    """The served field names (the configuration is read once per config object)."""
    cached = getattr(vllm_config, "_svf_field_names", None)
    if cached is None:
        cached = frozenset(served_fields(vllm_config.additional_config))
        try:
            object.__setattr__(vllm_config, "_svf_field_names", cached)
        except (AttributeError, TypeError):
            pass
    return cached


def _salted(salt: str | None, request: SteerRequest) -> str:
    return request.cache_salt() if salt is None else f"{salt}|{request.cache_salt()}"


def _hook_input_processor() -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs

    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        steer = None
        if isinstance(params, SamplingParams):
            try:
                steer = parse_request(params.extra_args, _field_names(self.vllm_config))
            except SVFArgumentError as exc:
                raise VLLMValidationError(str(exc), parameter="extra_args") from None
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if steer is not None:
            request.cache_salt = _salted(request.cache_salt, steer)
        return request

    InputProcessor.process_inputs = process_inputs


def _attach(runner) -> None:
    """Load the served fields and wrap the model's steered layers (a no-op without fields)."""
    specs = served_fields(runner.vllm_config.additional_config)
    if not specs:
        return
    if runner.speculative_config is not None:
        raise SVFArgumentError("the svf plugin does not steer with speculative decoding")
    if runner.parallel_config.pipeline_parallel_size > 1:
        raise SVFArgumentError("the svf plugin steers with tensor parallelism only, not "
                               f"pipeline_parallel_size={runner.parallel_config.pipeline_parallel_size}")
    text = runner.model_config.hf_text_config
    served = ServedFields(specs, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
                          max_tokens=runner.max_num_tokens, device=runner.device)
    served.attach(decoder_layers(runner.get_model(), text.num_hidden_layers))
    runner._svf_fields = served
    logger.info("svf: serving fields %s on layers %s", served.names, served.layers)


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
            hit = (params, None if params is None else parse_request(params.extra_args, names))
            parsed[req_id] = hit
        requests.append(hit[1])
    if len(parsed) > 4 * max(R, 64):  # forget finished requests now and then
        live = set(batch.req_ids[:R])
        for req_id in [k for k in parsed if k not in live]:
            del parsed[req_id]
    served.set_batch(num_scheduled, batch.num_computed_tokens_cpu, batch.num_prompt_tokens,
                     requests)


def _hook_runners() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runners = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        runners.append(CPUModelRunner)
    except ImportError:  # a GPU build without the CPU runner
        pass
    for cls in runners:
        original_load = cls.__dict__["load_model"]

        def load_model(self, *args, _original=original_load, **kwargs):
            _original(self, *args, **kwargs)
            _attach(self)

        cls.load_model = functools.wraps(original_load)(load_model)

    original_prepare = GPUModelRunner._prepare_inputs

    @functools.wraps(original_prepare)
    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        _fill(self, num_scheduled_tokens)
        return original_prepare(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

    GPUModelRunner._prepare_inputs = _prepare_inputs

    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner
    except ImportError:
        return
    original_v2 = V2Runner.load_model

    @functools.wraps(original_v2)
    def load_model_v2(self, *args, **kwargs):
        if served_fields(self.vllm_config.additional_config):
            raise SVFArgumentError("the svf plugin steers with vLLM's V1 model runner; start the "
                                   "engine with VLLM_USE_V2_MODEL_RUNNER=0")
        return original_v2(self, *args, **kwargs)

    V2Runner.load_model = load_model_v2


def install_hooks() -> None:
    """Patch vLLM once per process."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    _hook_input_processor()
    _hook_runners()
