"""The persistent tuning cache: which (backend, tactic) won for each problem bucket.

A versioned JSON file so a server tunes once, not at every start:

    {"format": "fp4core-tuning-cache", "version": 1,
     "entries": {"<key>": {"backend": "cutlass", "version": "0.1.0", "tactic": {...},
                           "us": 41.2, "per_backend": {"torch": {"version": ..., "tactic": ...,
                           "us": ...}, ...}, "dropped": {"x": "reason"}, "m": 16}}}

Location: ``$FP4CORE_TUNING_CACHE`` if set, else ``$XDG_CACHE_HOME/fp4core/tuning.json``
(``~/.cache/fp4core/tuning.json``). Writes are atomic (temporary file + rename) and merge
with what other processes wrote meanwhile. A corrupt or foreign file gives a warning and
is ignored (and replaced at the next save). An entry whose backend is missing or has
another version than the installed one is ignored.

In memory an entry is a ``CacheEntry`` (typed, validated when read); tactics stay the JSON
objects their backend's ``Tactic.to_json`` wrote, and the selector turns them back into the
backend's tactic type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

from fp4core.dispatch.problem import Problem

log = logging.getLogger("fp4core")

ENV_CACHE_PATH = "FP4CORE_TUNING_CACHE"
FORMAT_NAME = "fp4core-tuning-cache"
FORMAT_VERSION = 1
MAX_M_BUCKET = 16384


@dataclasses.dataclass(frozen=True)
class BackendRecord:
    """One backend's best tactic for a bucket: its version, the tactic's JSON, its median
    time (``us``) and, when a runoff re-timed it, the sweep's time (``sweep_us``)."""

    version: str
    tactic: Mapping[str, Any]
    us: float
    sweep_us: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"version": self.version, "tactic": dict(self.tactic), "us": self.us}
        if self.sweep_us is not None:
            out["sweep_us"] = self.sweep_us
        return out

    @classmethod
    def from_json(cls, rec: Any, what: str) -> "BackendRecord":
        why = _record_problem(rec, what)
        if why:
            raise ValueError(why)
        sweep = rec.get("sweep_us")
        return cls(rec["version"], dict(rec["tactic"]), float(rec["us"]),
                   float(sweep) if _is_number(sweep) else None)


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """The tuning result of one problem bucket.

    Attributes:
        backend, version, tactic, us: the winner, its version, its tactic's JSON and time.
        per_backend: every timed backend's best (name -> BackendRecord).
        dropped: candidate label ("backend[tactic]" or a backend name) -> why it was left out.
        m: the M the bucket was tuned at.
    """

    backend: str
    version: str
    tactic: Mapping[str, Any]
    us: float
    per_backend: Mapping[str, BackendRecord] = dataclasses.field(default_factory=dict)
    dropped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    m: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "version": self.version, "tactic": dict(self.tactic),
                "us": self.us, "per_backend": {n: r.to_json() for n, r in self.per_backend.items()},
                "dropped": dict(self.dropped), "m": self.m}

    @classmethod
    def from_json(cls, entry: Any) -> "CacheEntry":
        """Parse one entry of the file; ValueError says what is malformed."""
        why = entry_problem(entry)
        if why:
            raise ValueError(why)
        per = {name: BackendRecord.from_json(rec, name) for name, rec in entry.get("per_backend", {}).items()}
        m = entry.get("m")
        return cls(entry["backend"], entry["version"], dict(entry["tactic"]), float(entry["us"]), per,
                   dict(entry.get("dropped", {})), m if isinstance(m, int) else None)


def default_path() -> Path:
    env = os.environ.get(ENV_CACHE_PATH)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fp4core" / "tuning.json"


def m_bucket(m: int) -> int:
    """The largest power of two <= m (capped at 16384): calls in one bucket share a choice."""
    if m <= 1:
        return 1
    return min(1 << (m.bit_length() - 1), MAX_M_BUCKET)


def problem_key(problem: Problem) -> str:
    """Cache key: device, M bucket, N, K, format, layouts, dtypes, alpha, prepared, and the
    activation dtype for weight-only (W4A16) problems."""
    dev = problem.device
    dt = str(problem.out_dtype).replace("torch.", "")
    return (f"{dev.name}|sm{dev.sm}|m{m_bucket(problem.m or 1)}|n{problem.n}|k{problem.k}|"
            f"{problem.fmt.value}|a_sf={problem.a_sf_layout.value}|out={dt}|"
            f"alpha={int(problem.has_alpha)}|prepared={int(problem.prepared)}"
            + ("" if problem.act_dtype is None else f"|a={problem.activation}"))


class TuningCache:
    """In-memory tuning results backed by a JSON file. Thread-safe."""

    def __init__(self, path: str | os.PathLike | None = None):
        self._explicit_path = Path(path) if path is not None else None
        self._entries: dict[str, CacheEntry] = {}
        self._dirty: set[str] = set()
        self._loaded_from: Path | None = None
        self._lock = threading.RLock()
        self.generation = 0

    @property
    def path(self) -> Path:
        return self._explicit_path or default_path()

    @property
    def dirty(self) -> bool:
        """True when this process has results not yet saved."""
        return bool(self._dirty)

    # -- reading ---------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        path = self.path
        if self._loaded_from == path:
            return
        with self._lock:
            if self._loaded_from == path:
                return
            self._entries = {**_read_entries(path), **{k: self._entries[k] for k in self._dirty}}
            self._loaded_from = path
            self.generation += 1

    def lookup(self, key: str, versions: dict[str, str]) -> CacheEntry | None:
        """The entry for ``key`` if its winning backend is installed at the same version.

        ``versions`` maps installed backend names to versions. The returned entry's
        ``per_backend`` keeps only backends whose versions still match.
        """
        self._ensure_loaded()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if versions.get(entry.backend) != entry.version:
            return None
        per = {name: rec for name, rec in entry.per_backend.items() if versions.get(name) == rec.version}
        return dataclasses.replace(entry, per_backend=per)

    def untuned(self, key: str, versions: dict[str, str]) -> list[str]:
        """The backends of ``versions`` (candidates: name -> installed version) that the entry for
        ``key`` did not time at their installed version: upgraded or downgraded since, or
        installed after it was tuned. A backend the tuning run dropped (by name or all of its
        tactics) counts as covered, whatever its version now. Empty when there is no entry."""
        self._ensure_loaded()
        entry = self._entries.get(key)
        if entry is None:
            return []
        dropped_names = {label.split("[", 1)[0] for label in entry.dropped}
        out = []
        for name, version in versions.items():
            rec = entry.per_backend.get(name)
            if rec is not None:
                if rec.version != version:
                    out.append(name)
            elif name not in dropped_names:
                out.append(name)
        return out

    def tactic_for(self, key: str, backend: str, version: str) -> dict[str, Any] | None:
        """The JSON of the best tactic tuned for ``backend`` at ``version`` under ``key``, or None."""
        self._ensure_loaded()
        entry = self._entries.get(key)
        rec = entry.per_backend.get(backend) if entry is not None else None
        if rec is None or rec.version != version:
            return None
        return dict(rec.tactic)

    def entries(self) -> dict[str, CacheEntry]:
        self._ensure_loaded()
        return dict(self._entries)

    # -- writing ---------------------------------------------------------------------------
    def store(self, key: str, entry: CacheEntry) -> None:
        """Keep ``entry`` for ``key`` (saved to the file by ``save``)."""
        if not isinstance(entry, CacheEntry):
            raise TypeError(f"tuning cache entry for {key!r}: expected a CacheEntry, got {type(entry).__name__}")
        self._ensure_loaded()
        with self._lock:
            self._entries[key] = entry
            self._dirty.add(key)
            self.generation += 1

    def clear(self) -> None:
        """Forget all entries in memory (the file is untouched until ``save``)."""
        with self._lock:
            self._entries.clear()
            self._dirty.clear()
            self._loaded_from = self.path
            self.generation += 1

    def save(self) -> Path:
        """Merge this process's new entries into the file atomically; return its path."""
        path = self.path
        with self._lock, _file_lock(path):
            merged = _read_entries(path, quiet=True)
            merged.update({k: self._entries[k] for k in self._dirty if k in self._entries})
            doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                   "entries": {k: e.to_json() for k, e in merged.items()}}
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._entries = merged
            self._dirty.clear()
            self._loaded_from = path
        return path

    def save_or_warn(self) -> Path | None:
        """``save``, but a file-system problem (unwritable folder, full disk) becomes a
        RuntimeWarning and None: the results stay in memory for this process, and no GEMM
        or tuning run fails because the cache could not be written."""
        try:
            return self.save()
        except OSError as exc:
            warnings.warn(f"could not write the tuning cache {self.path}: {exc}; the tuning results "
                          f"are kept in memory for this process only (set {ENV_CACHE_PATH} to a "
                          f"writable file)", RuntimeWarning, stacklevel=2)
            return None


def _read_entries(path: Path, quiet: bool = False) -> dict[str, CacheEntry]:
    """Entries of the cache file at ``path``; {} (with a warning) if missing or unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _warn(f"cannot read tuning cache {path}: {exc}; ignoring it", quiet)
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        _warn(f"tuning cache {path} is corrupt ({exc}); ignoring it", quiet)
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        _warn(f"{path} is not an fp4core tuning cache; ignoring it", quiet)
        return {}
    if doc.get("version") != FORMAT_VERSION:
        _warn(f"tuning cache {path} has format version {doc.get('version')!r}, this fp4core reads "
              f"{FORMAT_VERSION}; ignoring it", quiet)
        return {}
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        _warn(f"tuning cache {path} has no entries table; ignoring it", quiet)
        return {}
    good, bad = {}, []
    for key, entry in entries.items():
        try:
            if not isinstance(key, str):
                raise ValueError("its key is not a string")
            good[key] = CacheEntry.from_json(entry)
        except ValueError as why:
            bad.append(f"{key!r}: {why}")
    if bad:
        _warn(f"tuning cache {path}: ignoring {len(bad)} malformed entr{'y' if len(bad) == 1 else 'ies'} "
              f"({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''})", quiet)
    return good


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _record_problem(rec: Any, what: str) -> str:
    if not isinstance(rec, dict):
        return f"{what} is not an object"
    if not isinstance(rec.get("version"), str):
        return f"{what} has no version string"
    if not isinstance(rec.get("tactic"), dict):
        return f"{what} has no tactic object"
    if not _is_number(rec.get("us")):
        return f"{what} has no time (us)"
    if rec.get("sweep_us") is not None and not _is_number(rec.get("sweep_us")):
        return f"{what} has a sweep_us that is not a number"
    return ""


def entry_problem(entry: Any) -> str:
    """Why ``entry`` is not a well-formed cache entry ("" when it is). Every field that
    ``auto``, ``explain`` and the tuner read is checked, so a hand-edited or foreign file
    cannot make them raise."""
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(entry.get("backend"), str):
        return "no backend name"
    why = _record_problem(entry, "the entry")
    if why:
        return why
    per = entry.get("per_backend", {})
    if not isinstance(per, dict):
        return "per_backend is not an object"
    for name, rec in per.items():
        why = _record_problem(rec, f"per_backend[{name!r}]")
        if why:
            return why
    dropped = entry.get("dropped", {})
    if not isinstance(dropped, dict) or not all(isinstance(v, str) for v in dropped.values()):
        return "dropped is not an object of strings"
    return ""


def _warn(message: str, quiet: bool) -> None:
    if quiet:
        log.info(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise writers across processes (POSIX advisory lock on a side file)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic rename still keeps the file whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
