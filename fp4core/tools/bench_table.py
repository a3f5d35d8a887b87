"""Markdown tables for the plugins' bench scripts: argument parsing, the run's header line,
and the loop that sweeps every tactic of a backend over M x (N, K) into one row per shape.

The plugins' ``bench_*.py`` scripts differ only in their columns; the parts here are what
they share, so that a table from one plugin reads like a table from another.
"""

from __future__ import annotations

import datetime
from typing import Callable, Sequence

import torch

from fp4core.tools.tactic_sweep import ShapeSweep, sweep_tactics


def parse_ms(text: str) -> list[int]:
    """``"1,8,16"`` -> ``[1, 8, 16]``: the M values (rows of A) of a bench run."""
    return [int(x) for x in text.split(",")]


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"8192:8192,28672:8192"`` -> ``[(8192, 8192), (28672, 8192)]``: the (N, K) weights."""
    return [tuple(int(v) for v in s.split(":")) for s in text.split(",")]


def run_header(use_nvfp4: bool, extra: str = "") -> str:
    """One line naming the device, the UTC time, torch's version and the format of a run.

    Args:
        use_nvfp4: NVFP4 (True) or MXFP4.
        extra: appended after the format, e.g. the copy bandwidth measured in the run.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    line = (f"device: {torch.cuda.get_device_name()}; date: {now:%Y-%m-%d %H:%M} UTC; "
            f"torch {torch.__version__}; format: {'NVFP4' if use_nvfp4 else 'MXFP4'}")
    return f"{line}; {extra}" if extra else line


class MarkdownTable:
    """A markdown table printed row by row as it fills (a cut-off run still shows its rows).

    Args:
        columns: the header cells.
        title: a line above the table (followed by a blank line), or None for none.
    """

    def __init__(self, columns: Sequence[str], title: str | None = None):
        self.lines = ([title, ""] if title is not None else []) + [
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def add(self, row: str) -> None:
        """Append one ``| a | b |`` row and print it."""
        print(row, flush=True)
        self.lines.append(row)

    def text(self) -> str:
        """The whole table (title included), without a final newline."""
        return "\n".join(self.lines)

    def save(self, path: str, mode: str = "a") -> None:
        """Write the table to ``path`` (``"a"``: append, a blank line after; ``"w"``: replace)."""
        with open(path, mode) as f:
            f.write(self.text() + ("\n\n" if mode == "a" else "\n"))


def sweep_table(backend: str, ms: Sequence[int], shapes: Sequence[tuple[int, int]], table: MarkdownTable,
                row: Callable[[ShapeSweep], str], **sweep_kwargs) -> None:
    """Sweep every tactic of ``backend`` on each (M, N, K) and add ``row(sweep)`` to ``table``.

    Shapes are the outer loop, M the inner one; the CUDA cache is emptied after each shape so
    that one large weight does not crowd the next.

    Args:
        backend: a loaded backend's name.
        ms: rows of A.
        shapes: (N, K) of the weights.
        table: receives one row per (M, N, K).
        row: formats a row from the sweep (``sweep.best`` is None when no tactic was correct).
        **sweep_kwargs: passed to ``fp4core.tools.tactic_sweep.sweep_tactics`` (use_nvfp4,
            reps, timer, progress, extra_tactics, ...).
    """
    for n, k in shapes:
        for m in ms:
            table.add(row(sweep_tactics(backend, m, n, k, **sweep_kwargs)))
            torch.cuda.empty_cache()
