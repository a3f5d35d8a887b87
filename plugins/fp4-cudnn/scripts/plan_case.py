"""Shared set-up of the single-shape probe scripts (graph_vs_eager, interleave_probe): one
problem, two random input sets and one cuDNN plan of the "plain" graph, by engine name."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

import fp4core
from fp4core.dispatch.problem import Operands, Problem
from fp4core.dispatch.synthetic import random_operands
from fp4_cudnn.plugin import CudnnBackend, CudnnTactic


@dataclass
class PlanCase:
    backend: CudnnBackend
    problem: Problem
    sets: list[Operands]
    tactic: CudnnTactic
    out: torch.Tensor  # (M, N) bf16 output buffer


def add_case_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shape", default="4096:8192:8192", help="M:N:K")
    ap.add_argument("--engine", default="eng0", help="the cuDNN plan (engine name) of the plain graph")


def plan_case(args: argparse.Namespace) -> PlanCase:
    """The case ``--shape`` / ``--engine`` name, on the current CUDA device."""
    m, n, k = (int(v) for v in args.shape.split(":"))
    be = CudnnBackend()
    p = fp4core.make_problem(m, n, k, device="cuda")
    sets = [random_operands(p) for _ in range(2)]
    tac = next(t for t in be.tactics(p) if t.graph == "plain" and t.engine == args.engine)
    return PlanCase(be, p, sets, tac, torch.empty(m, n, dtype=torch.bfloat16, device="cuda"))
