"""Entries served by name from a directory while the engine runs (``fields_dir``).

The front end resolves a request's name (:class:`FieldsDir`): a plain name (letters, digits,
``_``, ``-`` and ``.``, not starting with ``.``, at most 128 characters) is
``DIR/<name>.safetensors`` or ``DIR/<name>/field.safetensors``, and a path that leads outside
``DIR`` (through a symlink) is refused before it is opened. The artifact's bytes are read once,
hashed (SHA-256) and copied into a content-addressed snapshot store, and the snapshot is checked
there: a valid artifact, for this model, that fits a slot. The request then carries the hash,
its prefix cache is salted with it, and the engine loads the snapshot the hash names
(:func:`load_snapshot`, which checks the hash again). A file replaced under the same name is a
new entry from the next request on; requests already running keep the one they started with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from svf_kernels import SVFArgumentError

from ..artifacts import FIELD_FILENAME, ArtifactError
from ..models import cache_dir
from ..scorer import ScorerConfig
from ..steering_field import SteeringField
from ..table_entries import TableEntry, table_entry
from .request_params import MAX_STRENGTH

#: A name a request may give for an entry of ``fields_dir``.
NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
#: The scorer ``eps`` the engine's slot tables use (every artifact trained by svf has it).
SLOT_EPS = ScorerConfig.eps
#: The largest artifact the front end reads (the artifact loader's own limit).
MAX_BYTES = 2**31


def snapshot_store() -> Path:
    """Where snapshots live: ``cache_dir()/vllm-snapshots`` (``$SVF_CACHE_DIR`` moves it)."""
    return cache_dir() / "vllm-snapshots"


def snapshot_path(store: Path, sha256: str) -> Path:
    """The snapshot file of content hash ``sha256`` (64 lowercase hex digits) in ``store``."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise SVFArgumentError(f"not a SHA-256 content hash: {sha256!r}")
    return store / f"{sha256}.safetensors"


@dataclass(frozen=True)
class DirEntry:
    """A checked entry of ``fields_dir``: its name, content hash and largest ``|alpha|``."""

    name: str
    sha256: str
    alpha_bound: float


def check_entry(entry: TableEntry, what: str, max_units: int) -> None:
    """An entry a slot can hold: one concept of at most ``max_units`` hidden units, trained with
    the slot tables' ``eps``."""
    (field,) = entry.concepts
    if field.scorer.config.m > max_units:
        raise SVFArgumentError(f"{what} has {field.scorer.config.m} hidden units; the engine's "
                               f"slots hold {max_units} (configure 'max_units')")
    if field.scorer.config.eps != SLOT_EPS:
        raise SVFArgumentError(f"{what} was trained with eps {field.scorer.config.eps:g}; the "
                               f"engine's slots use {SLOT_EPS:g}")


def load_snapshot(store: Path, sha256: str, *, hidden_size: int, num_layers: int,
                  max_units: int) -> TableEntry:
    """The entry of snapshot ``sha256`` (its bytes checked against the hash), for the engine."""
    path = snapshot_path(store, sha256)
    data = _read(path, str(path))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ArtifactError(f"{path}: the snapshot's content does not match its hash")
    what = f"field snapshot {sha256[:12]}"
    entry = table_entry(SteeringField.load(path, hidden_size=hidden_size, num_layers=num_layers),
                        what=what)
    check_entry(entry, what, max_units)
    return entry


def _read(path: Path, source: str) -> bytes:
    """The regular file ``path``'s bytes (at most :data:`MAX_BYTES`), or ArtifactError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{source}: not a regular file")
            if st.st_size > MAX_BYTES:
                raise ArtifactError(f"{source}: file is {st.st_size} bytes, over {MAX_BYTES}")
            return f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{source}: cannot read: {exc.strerror or exc}") from None


class FieldsDir:
    """The front end's view of ``fields_dir``: request names resolved, read, snapshotted and
    checked (see the module doc), with the result kept while the file's status is unchanged."""

    def __init__(self, folder: str, *, hidden_size: int, num_layers: int, max_units: int,
                 store: Path | None = None) -> None:
        self.folder = Path(os.path.realpath(folder))
        self.hidden_size, self.num_layers, self.max_units = hidden_size, num_layers, max_units
        self.store = snapshot_store() if store is None else store
        self._seen: dict[str, tuple[tuple, DirEntry]] = {}

    def _file(self, name: str) -> Path:
        """The artifact file of ``name`` inside the folder, or an error naming the problem."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
            raise SVFArgumentError(
                f"field name {name!r} is not a plain name (letters, digits, '_', '-' and '.', "
                "not starting with '.', no '..', at most 128 characters)")
        for candidate in (self.folder / f"{name}.safetensors", self.folder / name / FIELD_FILENAME):
            if os.path.lexists(candidate):
                real = Path(os.path.realpath(candidate))
                if not real.is_relative_to(self.folder):
                    raise SVFArgumentError(f"field {name!r} leads outside fields_dir")
                return real
        raise SVFArgumentError(f"no field named {name!r}: neither {name}.safetensors nor "
                               f"{name}/{FIELD_FILENAME} is in fields_dir")

    def resolve(self, name: str) -> DirEntry:
        """The entry ``name`` names now, snapshotted and checked; an error names the problem."""
        file = self._file(name)
        try:
            st = os.stat(file)
        except OSError as exc:
            raise SVFArgumentError(f"field {name!r}: cannot read: {exc.strerror}") from None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._seen.get(name)
        if hit is not None and hit[0] == key and snapshot_path(self.store, hit[1].sha256).exists():
            return hit[1]
        data = _read(file, f"field {name!r}")
        sha256 = hashlib.sha256(data).hexdigest()
        snapshot = self._write_snapshot(sha256, data)
        what = f"field {name!r}"
        try:
            entry = table_entry(SteeringField.load(snapshot, hidden_size=self.hidden_size,
                                                   num_layers=self.num_layers), what=what)
        except ArtifactError as exc:  # name the request's entry, not the snapshot file
            raise ArtifactError(f"{what}: {str(exc).split(': ', 1)[-1]}") from None
        check_entry(entry, what, self.max_units)
        found = DirEntry(name, sha256, MAX_STRENGTH * max(entry.scale(i) for i in entry.layers))
        self._seen[name] = (key, found)
        return found

    def _write_snapshot(self, sha256: str, data: bytes) -> Path:
        """The snapshot of ``data``, written (atomically) unless the store has it."""
        path = snapshot_path(self.store, sha256)
        if path.exists():
            return path
        self.store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".snapshot.", dir=self.store)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path
