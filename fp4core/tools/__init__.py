"""Tooling outside the runtime import path: the CLI, benchmarks, tactic sweeps, plots and prebuilds."""
