"""Typed tactics: one frozen dataclass per backend, JSON scalars only.

A backend declares its tactic class in ``BackendInfo.tactic_type``; its ``tactics`` hook
returns instances of it and its ``run`` hook reads their fields (``tactic.split_k``), so no
plugin re-parses a dict with its own defaults. The tuning cache stores ``to_json()`` and gets
the typed tactic back through ``from_json``, which refuses unknown fields, missing fields and
wrong types (a cache written by another version of the backend is then ignored, not run).

    @dataclasses.dataclass(frozen=True)
    class MyTactic(fp4core.Tactic):
        tile_n: int = 128
        split_k: int = 1
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="Tactic")

#: field types a tactic may have (what JSON carries without loss)
_SCALARS = (bool, int, float, str)
_UNIONS = (typing.Union, types.UnionType)


@dataclasses.dataclass(frozen=True)
class Tactic:
    """Base of every backend's tactic; a tactic with no fields is the default tactic.

    Subclasses are frozen dataclasses whose fields are ``bool``, ``int``, ``float`` or ``str``
    (optionally ``| None``). Instances are hashable and compare by value.
    """

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object, e.g. ``{"tile_n": 128, "split_k": 4}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
        """The tactic ``to_json`` wrote. Raises ValueError naming the class and the field when
        ``data`` has an unknown or missing field or a value of the wrong type."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        types = _field_types(cls)
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(map(repr, unknown))}; "
                             f"fields are {', '.join(types) or 'none'}")
        for name, value in data.items():
            allowed, optional = types[name]
            if value is None and optional:
                continue
            # bool is an int in Python: accept it only where the field is a bool
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
                raise ValueError(f"{cls.__name__}.{name}: expected "
                                 f"{' or '.join(t.__name__ for t in allowed)}, got {value!r}")
        try:
            return cls(**data)
        except TypeError as exc:  # a field without default is missing
            raise ValueError(f"{cls.__name__}: {exc}") from None

    def label(self) -> str:
        """Short text for logs and tables: ``"split_k=4,tile_n=128"`` (fields that are None are
        left out), ``"default"`` when nothing is left."""
        items = sorted((k, v) for k, v in self.to_json().items() if v is not None)
        return ",".join(f"{k}={v}" for k, v in items) if items else "default"

    def __str__(self) -> str:
        return self.label()


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """field name -> (accepted Python types, None allowed), checked once per class."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
        optional = type(None) in args
        allowed = tuple(a for a in args if a is not type(None))
        if not allowed or not all(a in _SCALARS for a in allowed):
            raise TypeError(f"{cls.__name__}.{f.name}: a tactic field must be bool, int, float or str "
                            f"(or one of them | None), got {hint!r}")
        if float in allowed and int not in allowed:
            allowed += (int,)  # JSON writes 2.0 as 2
        out[f.name] = (allowed, optional)
    return out


def check_tactic_type(cls: Any) -> None:
    """Raise ValueError unless ``cls`` is a frozen dataclass subclass of Tactic with scalar
    fields (what ``BackendInfo.tactic_type`` must be)."""
    if not (isinstance(cls, type) and issubclass(cls, Tactic)):
        raise ValueError(f"tactic_type must be a subclass of fp4core.Tactic, got {cls!r}")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__dataclass_fields__" not in cls.__dict__:
        raise ValueError(f"tactic_type {cls.__name__} must be decorated with "
                         f"@dataclasses.dataclass(frozen=True)")
    try:
        _field_types(cls)
    except (TypeError, NameError) as exc:
        raise ValueError(str(exc)) from None
