"""fp4core's environment switches, read one way everywhere.

A switch is off when unset or empty. The words ``1 true yes on`` turn it on and
``0 false no off`` turn it off (any case, surrounding spaces ignored); anything else is
refused with a ValueError that names the variable, so ``FP4CORE_AUTOTUNE=false`` can never
switch tuning on by being a non-empty string.
"""

from __future__ import annotations

import os

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str) -> bool:
    """The boolean value of environment variable ``name`` (False when unset).

    Raises ValueError for a value that is neither a true nor a false word."""
    raw = os.environ.get(name)
    if raw is None:
        return False
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of {sorted(TRUE_WORDS)} to switch it on or "
                     f"{sorted(FALSE_WORDS - {''})} (or unset) to switch it off")
