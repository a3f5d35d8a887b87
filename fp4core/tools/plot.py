"""``fp4core bench --plot``: time vs M per backend, one panel per (N, K), log-log axes."""

from __future__ import annotations


def plot_rows(rows, path: str, floor_tbps: float = 3.0) -> None:
    """Draw bench rows (fp4core.tools.bench.BenchRow) to a PNG at ``path``.

    The dashed line is the FP4 bandwidth floor: NVFP4 operand + output bytes over
    ``floor_tbps``. Needs matplotlib (``pip install matplotlib``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    groups = sorted({(r.n, r.k) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (n, k) in zip(axes[0], groups):
        sel = [r for r in rows if (r.n, r.k) == (n, k) and not r.error and not r.skipped]
        for name in sorted({r.backend for r in sel}):
            pts = sorted((r.m, r.median_us) for r in sel if r.backend == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ms = sorted({r.m for r in sel})
        floor = [((m + n) * k * 0.5625 + 2 * m * n) / (floor_tbps * 1e6) for m in ms]
        ax.plot(ms, floor, "k--", label=f"bandwidth floor @ {floor_tbps:g} TB/s")
        ax.set(xscale="log", yscale="log", xlabel="M", ylabel="median time (us)", title=f"N={n}, K={k}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
