"""Backend discovery and isolation.

Built-in backends are registered first; plugins come from the entry-point group
``fp4core.backends`` (read once, lazily, on first use). A plugin that fails to import, to
register, or to describe itself is recorded as broken with its error text and skipped:
it never breaks ``import fp4core`` or the other backends.

Environment:
    FP4CORE_DISABLE_PLUGIN_AUTOLOAD=1   (or true/yes/on) load no entry points (built-ins and in-process
                                        registrations still work), like pytest's variable.
    FP4CORE_BACKENDS=a,b                only these backends are enabled (built-ins too).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import traceback
from importlib import metadata
from typing import Any, Callable, Mapping

import pluggy

from fp4core.env import env_flag
from fp4core.errors import BackendFailedError
from fp4core.dispatch.hooks import PROJECT, BackendInfo, BackendSpec, Support, Tactic
from fp4core.dispatch.tactic import check_tactic_type
from fp4core.dispatch.problem import Operands, Problem

log = logging.getLogger("fp4core")

ENTRY_POINT_GROUP = "fp4core.backends"
ENV_DISABLE_AUTOLOAD = "FP4CORE_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "FP4CORE_BACKENDS"

#: pip packages of the project's own plugins, for "not installed" messages.
KNOWN_PACKAGES = {"cudnn": "fp4-cudnn", "cutlass": "fp4-cutlass", "trtllm": "fp4-trtllm",
                  "triton": "fp4-triton"}

_REQUIRED_HOOKS = ("backend_info", "supports", "run")


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _check_info(info: BackendInfo) -> None:
    """Refuse metadata that would fail later, inside dispatch (a bad priority would make
    every ``auto`` call raise while sorting candidates)."""
    if (not isinstance(info.name, str) or not info.name or info.name == "auto"
            or any(c.isspace() or c in ",|" for c in info.name)):
        raise ValueError(f"backend_info().name must be a non-empty string without spaces, ',' or '|' "
                         f"and not 'auto', got {info.name!r}")
    if not isinstance(info.version, str) or not info.version:
        raise ValueError(f"backend {info.name!r}: backend_info().version must be a non-empty string, "
                         f"got {info.version!r}")
    if not isinstance(info.priority, Mapping):
        raise ValueError(f"backend {info.name!r}: backend_info().priority must be a mapping of regime "
                         f"to int, got {type(info.priority).__name__}")
    for key, value in info.priority.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"backend {info.name!r}: backend_info().priority must map regime names to "
                             f"ints, got {key!r}: {value!r}")
    if not isinstance(info.needs_prepare, bool):
        raise ValueError(f"backend {info.name!r}: backend_info().needs_prepare must be a bool, got "
                         f"{info.needs_prepare!r}")
    for field in ("targets", "verified"):
        vals = getattr(info, field)
        if isinstance(vals, str) or not all(isinstance(v, str) for v in vals):
            raise ValueError(f"backend {info.name!r}: backend_info().{field} must be a tuple of strings, "
                             f"got {vals!r}")
    acts = info.activations
    if isinstance(acts, str) or not acts or not set(acts) <= {"fp4", "bf16", "fp16"}:
        raise ValueError(f"backend {info.name!r}: backend_info().activations must be a non-empty tuple of "
                         f"'fp4', 'bf16', 'fp16', got {acts!r}")
    try:
        check_tactic_type(info.tactic_type)
    except ValueError as exc:
        raise ValueError(f"backend {info.name!r}: backend_info().{exc}") from None


@dataclasses.dataclass
class Backend:
    """A loaded backend: its metadata and its hooks, called for this backend alone.

    ``supports``, ``tactics``, ``prepare``, ``bind`` and ``build`` go through pluggy (a hook
    caller restricted to this plugin), so pluggy's tracing and call monitoring see them.
    ``run`` calls the plugin's function directly: it is the per-call launch path, and a pluggy
    call costs about 2 us of host time there (measured on the development machine: 2.3 us vs
    0.05 us for a direct call); ``bind``'s launcher is also called directly, per forward.
    """

    name: str
    info: BackendInfo
    origin: str
    plugin: Any
    _pm: pluggy.PluginManager
    _hooks: frozenset[str]
    _run: Callable[..., Any]
    last_error: str = ""

    @property
    def version(self) -> str:
        return self.info.version

    def has_hook(self, hook: str) -> bool:
        """Whether the plugin implements ``hook`` (the optional ones: prepare, tactics, bind, build)."""
        return hook in self._hooks

    def _call(self, hook: str, **kwargs: Any) -> Any:
        others = [p for p in self._pm.get_plugins() if p is not self.plugin]
        return self._pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)

    def sees(self, problem: Problem) -> Problem:
        """``problem`` as this backend is shown it. A backend without a ``prepare`` hook takes
        the canonical weight whether or not it came through ``fp4core.prepare``, so it is
        never told ``prepared=True``: its ``supports`` answers the same for a prepared and a
        plain weight, and ``auto`` on a prepared weight chooses among every backend."""
        return problem.plain if problem.prepared and "prepare" not in self._hooks else problem

    def supports(self, problem: Problem) -> Support:
        """The backend's answer; an exception becomes a refusal that names it. A problem whose
        activation kind the backend does not list in ``BackendInfo.activations`` is refused
        here, without asking the plugin."""
        if problem.activation not in self.info.activations:
            return Support.no(f"takes {'/'.join(self.info.activations)} activations, not {problem.activation} "
                              f"(BackendInfo.activations)")
        try:
            answer = self._call("supports", problem=self.sees(problem))
        except Exception as exc:  # isolation: one broken plugin must not break auto
            self.last_error = f"supports() raised {_short_error(exc)}"
            log.warning("backend %r: %s", self.name, self.last_error)
            return Support.no(self.last_error)
        if isinstance(answer, bool):
            answer = Support(answer, "" if answer else "unsupported (no reason given)")
        if not isinstance(answer, Support):
            self.last_error = f"supports() returned {type(answer).__name__}, expected Support"
            return Support.no(self.last_error)
        return answer

    def tactics(self, problem: Problem) -> list[Tactic]:
        """The backend's tactics for ``problem``, best guess first (the default-constructed
        ``tactic_type`` without the hook).

        Raises BackendFailedError (naming the backend) when the hook raises or returns
        something that is not a list of ``info.tactic_type`` instances."""
        kind = self.info.tactic_type
        if "tactics" not in self._hooks:
            return [kind()]
        try:
            found = list(self._call("tactics", problem=self.sees(problem)) or [])
            bad = [t for t in found if type(t) is not kind]
            if bad:
                raise TypeError(f"tactics must be {kind.__name__} instances (backend_info().tactic_type), "
                                f"got {type(bad[0]).__name__}: {bad[0]!r}")
        except Exception as exc:
            raise BackendFailedError(self.name, "tactics", exc) from exc
        return found or [kind()]

    def tactic_from_json(self, data: Mapping[str, Any]) -> Tactic:
        """This backend's tactic from its JSON (as the tuning cache stores it); ValueError
        when the fields do not fit ``info.tactic_type``."""
        return self.info.tactic_type.from_json(data)

    def prepare(self, problem: Problem, operands: Operands) -> Operands:
        """The weight in this backend's layout (``operands`` itself without the hook).

        Raises BackendFailedError when the hook raises or returns no Operands."""
        if "prepare" not in self._hooks:
            return operands
        try:
            out = self._call("prepare", problem=problem, operands=operands)
            if not isinstance(out, Operands):
                raise TypeError(f"prepare() must return fp4core.Operands, got {type(out).__name__}")
        except Exception as exc:
            raise BackendFailedError(self.name, "prepare", exc) from exc
        return out

    def run(self, problem: Problem, operands: Operands, tactic: Tactic, out) -> None:
        """Launch the backend. Raises BackendFailedError (naming the backend, the original
        exception chained) when the hook raises."""
        try:
            self._run(problem=self.sees(problem), operands=operands, tactic=tactic, out=out)
        except Exception as exc:
            raise BackendFailedError(self.name, "run", exc) from exc

    def bind(self, problem: Problem, weight: Operands, tactic: Tactic) -> Callable[..., None]:
        """``launch(a, a_scale, alpha, out)`` for repeated runs of one (problem, weight,
        tactic): the backend's ``bind`` hook, else a closure over ``run``. Failures of the
        hook (here) and of a launch raise BackendFailedError naming the backend."""
        seen = self.sees(problem)
        if "bind" in self._hooks:
            try:
                launch = self._call("bind", problem=seen, operands=weight, tactic=tactic)
                if not callable(launch):
                    raise TypeError(f"bind() must return a callable, got {type(launch).__name__}")
            except Exception as exc:
                raise BackendFailedError(self.name, "bind", exc) from exc
        else:
            run, b, b_scale, extra = self._run, weight.b, weight.b_scale, weight.extra

            def launch(a, a_scale, alpha, out):
                run(problem=seen, operands=Operands(a, a_scale, b, b_scale, alpha, extra), tactic=tactic, out=out)
        name = self.name

        def checked(a, a_scale, alpha, out):
            try:
                launch(a, a_scale, alpha, out)
            except Exception as exc:
                raise BackendFailedError(name, "run", exc) from exc
        return checked

    def bind_quantizing(self, problem: Problem, weight: Operands, tactic: Tactic,
                        act_dtype: Any) -> Callable[..., None] | None:
        """``launch(x, global_scale, weight_global_scale, alpha, out)``: the backend's
        ``bind_quantizing`` hook (the NVFP4 activation quantization inside the GEMM), or None
        when it has none or declines this (problem, tactic, dtype). Failures of the hook and of a launch raise BackendFailedError
        naming the backend."""
        if "bind_quantizing" not in self._hooks:
            return None
        try:
            launch = self._call("bind_quantizing", problem=self.sees(problem), operands=weight, tactic=tactic,
                                act_dtype=act_dtype)
            if launch is not None and not callable(launch):
                raise TypeError(f"bind_quantizing() must return a callable or None, got {type(launch).__name__}")
        except Exception as exc:
            raise BackendFailedError(self.name, "bind_quantizing", exc) from exc
        if launch is None:
            return None
        name = self.name

        def checked(x, global_scale, weight_global_scale, alpha, out):
            try:
                launch(x, global_scale, weight_global_scale, alpha, out)
            except Exception as exc:
                raise BackendFailedError(name, "run", exc) from exc
        return checked

    @property
    def can_build(self) -> bool:
        """Whether the backend implements the optional ``build`` hook."""
        return "build" in self._hooks

    def build(self, archs: list[str], progress: bool = True) -> list[str]:
        """Prebuild this backend's kernels for ``archs``; [] when it has nothing to build."""
        if "build" not in self._hooks:
            return []
        return list(self._call("build", archs=list(archs), progress=progress) or [])


def _direct(impl: pluggy.HookImpl) -> Callable[..., Any]:
    """A function taking the spec's keyword arguments and passing the impl only the
    arguments it declares (pluggy's calling convention), without pluggy's per-call cost."""
    fn, names = impl.function, tuple(impl.argnames)
    return lambda **kw: fn(*[kw[n] for n in names])


@dataclasses.dataclass(frozen=True)
class BrokenBackend:
    """A plugin that could not be loaded, and why."""

    name: str
    origin: str
    error: str
    details: str = ""


class Registry:
    """The set of backends of this process, registered in pluggy under their backend names.

    A backend disabled by ``FP4CORE_BACKENDS`` is blocked in pluggy (``pm.is_blocked``), so
    it cannot be registered later either; ``disabled()`` lists the blocked names."""

    def __init__(self, builtins: Callable[[], list[Any]] | None = None):
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(BackendSpec)
        self._builtins = builtins
        self._backends: dict[str, Backend] = {}
        self._broken: dict[str, BrokenBackend] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.generation = 0  # bumped on every change, so callers can drop derived caches

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The pluggy PluginManager (e.g. for ``add_hookcall_monitoring`` or tracing)."""
        return self._pm

    # -- loading ---------------------------------------------------------------------------
    def _allowed(self, name: str) -> bool:
        only = os.environ.get(ENV_ONLY, "").strip()
        if not only:
            return True
        return name in {n.strip() for n in only.split(",") if n.strip()}

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for plugin in (self._builtins() if self._builtins else []):
                self._add(plugin, None, "built into fp4core")
            if env_flag(ENV_DISABLE_AUTOLOAD):
                log.info("%s is set: not loading plugins", ENV_DISABLE_AUTOLOAD)
            else:
                self._load_entry_points()
            self._loaded = True
            self.generation += 1

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = (f"{dist.name} {dist.version}" if dist is not None else ep.value)
            if not self._allowed(ep.name):
                self._pm.set_blocked(ep.name)
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                self._mark_broken(ep.name, origin, f"import failed: {_short_error(exc)}")
                continue
            self._add(obj, ep.name, origin)

    def _mark_broken(self, name: str, origin: str, error: str) -> None:
        log.warning("fp4core backend %r (%s) is broken: %s", name, origin, error)
        self._broken[name] = BrokenBackend(name, origin, error, traceback.format_exc())

    def _info_of(self, plugin: Any) -> BackendInfo:
        """The plugin's ``backend_info`` (called once, before it is registered under that name)."""
        if self._pm.parse_hookimpl_opts(plugin, "backend_info") is None:
            raise TypeError("missing required hook(s) backend_info (decorate it with @fp4core.hookimpl)")
        info = getattr(plugin, "backend_info")()
        if not isinstance(info, BackendInfo):
            raise TypeError(f"backend_info() must return fp4core.BackendInfo, got {type(info).__name__}")
        _check_info(info)
        return info

    def _add(self, obj: Any, expected_name: str | None, origin: str) -> Backend | None:
        """Register one plugin object; on any failure record it as broken."""
        label = expected_name or getattr(obj, "__name__", type(obj).__name__)
        try:
            plugin = obj() if inspect.isclass(obj) else obj
            hash(plugin)  # pluggy keeps plugins in sets
            info = self._info_of(plugin)
            if expected_name is not None and info.name != expected_name:
                raise ValueError(f"entry point is named {expected_name!r} but backend_info() "
                                 f"says {info.name!r}; they must match")
            if not self._allowed(info.name):
                self._pm.set_blocked(info.name)
                return None
            if self._pm.is_blocked(info.name):
                return None
            if info.name in self._backends:
                raise ValueError(f"a backend named {info.name!r} is already registered "
                                 f"({self._backends[info.name].origin})")
            self._pm.register(plugin, name=info.name)  # pluggy validates every hookimpl here
        except Exception as exc:
            self._mark_broken(label, origin, _short_error(exc))
            return None
        try:
            backend = self._wrap(plugin, info, origin)
        except Exception as exc:
            self._pm.unregister(plugin)
            self._mark_broken(label, origin, _short_error(exc))
            return None
        self._broken.pop(backend.name, None)
        self._backends[backend.name] = backend
        return backend

    def _wrap(self, plugin: Any, info: BackendInfo, origin: str) -> Backend:
        impls: dict[str, pluggy.HookImpl] = {}
        for hook_name in ("supports", "prepare", "tactics", "run", "build", "bind", "bind_quantizing"):
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    impls[hook_name] = impl
        missing = [h for h in _REQUIRED_HOOKS if h != "backend_info" and h not in impls]
        if missing:
            raise TypeError(f"missing required hook(s) {', '.join(missing)} "
                            f"(decorate them with @fp4core.hookimpl)")
        if "tactics" not in impls:
            try:
                info.tactic_type()
            except TypeError as exc:
                raise TypeError(f"without a tactics hook, tactic_type {info.tactic_type.__name__} must "
                                f"construct with no arguments (it is the only tactic): {exc}") from None
        return Backend(info.name, info, origin, plugin, self._pm, frozenset(impls), _direct(impls["run"]))

    # -- public ----------------------------------------------------------------------------
    def register(self, plugin: Any, origin: str = "registered in process") -> Backend:
        """Register a plugin object (or class) now; raise if it is invalid."""
        self.ensure_loaded()
        with self._lock:
            broken_before = set(self._broken)
            backend = self._add(plugin, None, origin)
            if backend is None:
                new = [b for n, b in self._broken.items() if n not in broken_before]
                why = new[0].error if new else "disabled by " + ENV_ONLY
                raise ValueError(f"could not register backend: {why}")
            self.generation += 1
            return backend

    def unregister(self, name: str) -> None:
        """Remove a backend registered earlier (in-process or from an entry point)."""
        with self._lock:
            backend = self._backends.pop(name, None)
            if backend is None:
                raise KeyError(f"no backend named {name!r} is registered")
            self._pm.unregister(backend.plugin)
            self.generation += 1

    def get(self, name: str) -> Backend | None:
        self.ensure_loaded()
        return self._backends.get(name)

    def backends(self) -> list[Backend]:
        self.ensure_loaded()
        return list(self._backends.values())

    def broken(self) -> list[BrokenBackend]:
        self.ensure_loaded()
        return list(self._broken.values())

    def disabled(self) -> dict[str, str]:
        """Backend name -> why it is disabled (blocked in pluggy)."""
        self.ensure_loaded()
        return {name: f"not in {ENV_ONLY}" for name, plugin in self._pm.list_name_plugin()
                if plugin is None and self._pm.is_blocked(name)}

    def reset(self) -> None:
        """Forget everything; the next use reloads built-ins and entry points."""
        with self._lock:
            for name, plugin in self._pm.list_name_plugin():
                if plugin is None:
                    self._pm.unblock(name)
                else:
                    self._pm.unregister(plugin)
            self._backends.clear()
            self._broken.clear()
            self._loaded = False
            self.generation += 1
