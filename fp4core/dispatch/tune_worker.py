"""Offline tuning that survives a candidate that kills its process (``fp4core tune``).

A kernel that faults (an illegal address, an unspecified launch failure) takes the whole CUDA
context with it: nothing after it can run in that process, and an in-process tuner can only
stop. So ``tune_isolated`` runs the tuning in a worker process (``python -m
fp4core.dispatch.tune_worker SPEC``) that tells the parent, through a status file of JSON lines, which
problem and which candidate it is running. When the worker dies, the parent leaves that
candidate out of that problem (the reason lands in the problem's tuning-cache entry, under
``dropped``) and starts a new worker at the same problem; finished problems are not redone.

A kernel that never finishes (a deadlocked pipeline) stops the worker without killing it, so
the parent also watches for progress: when neither the status file nor the worker's stderr
has moved for ``FP4CORE_TUNE_STALL_S`` seconds (default 600, long enough for a first JIT
build), the worker is killed and the candidate it was running is left out like one that
crashed ("made no progress for N s").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch

#: restarts of the worker for one problem before that problem is given up
MAX_RESTARTS_PER_PROBLEM = 16
#: environment variable: seconds without progress before a tuning worker counts as hung
ENV_STALL = "FP4CORE_TUNE_STALL_S"
DEFAULT_STALL_S = 600.0


def stall_limit() -> float:
    """Seconds a tuning worker may go without progress (``FP4CORE_TUNE_STALL_S``, default 600)."""
    raw = os.environ.get(ENV_STALL, "").strip()
    if not raw:
        return DEFAULT_STALL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_STALL}: expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{ENV_STALL}: expected a positive number of seconds, got {raw!r}")
    return value

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def problem_spec(m: int, n: int, k: int, *, use_nvfp4: bool = True, out_dtype: torch.dtype = torch.bfloat16,
                 use_8x4_sf_layout: bool = False, prepared: bool = False) -> dict:
    """A problem as JSON-able keyword arguments of ``fp4core.make_problem`` (current device)."""
    return {"m": m, "n": n, "k": k, "use_nvfp4": use_nvfp4, "out_dtype": str(out_dtype).split(".")[-1],
            "use_8x4_sf_layout": use_8x4_sf_layout, "prepared": prepared}


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _read_events(path: Path) -> list[dict]:
    events = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by the worker's death
                pass
    return events


def _run_worker(spec: dict, say: Callable[[str], None], stall_s: float | None = None
                ) -> tuple[int, list[dict], str, float | None]:
    """One worker over ``spec``; returns (exit code, status events, last lines of its stderr,
    the seconds without progress after which it was killed, or None). The worker's stderr (its
    progress) is echoed through ``say`` as it comes."""
    stall_s = stall_limit() if stall_s is None else stall_s
    with tempfile.TemporaryDirectory(prefix="fp4core-tune-") as tmp:
        spec_path, status = Path(tmp) / "spec.json", Path(tmp) / "status.jsonl"
        spec_path.write_text(json.dumps(dict(spec, status=str(status))))
        proc = subprocess.Popen([sys.executable, "-m", "fp4core.dispatch.tune_worker", str(spec_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        tail: deque[str] = deque(maxlen=8)
        last_progress = [time.monotonic()]

        def pump():
            for line in proc.stderr:
                line = line.rstrip("\n")
                tail.append(line)
                last_progress[0] = time.monotonic()
                say(line)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        seen_size, stalled = -1, None
        while True:
            try:
                rc = proc.wait(timeout=min(1.0, stall_s / 4))
                break
            except subprocess.TimeoutExpired:
                size = status.stat().st_size if status.exists() else 0
                if size != seen_size:
                    seen_size, last_progress[0] = size, time.monotonic()
                if time.monotonic() - last_progress[0] > stall_s:
                    stalled = stall_s
                    proc.kill()  # a hung kernel: nothing else ends it
        reader.join(timeout=10)
        return rc, _read_events(status), "\n".join(tail), stalled


def tune_isolated(specs: list[dict], *, force: bool = False,
                  progress: Callable[[str], None] | None = None) -> list[dict]:
    """Tune each problem of ``specs`` (``problem_spec`` dicts) in worker processes and write
    the tuning cache; a candidate that kills a worker is left out of its problem, with the
    reason in the cache entry. Returns one dict per problem, in order: ``key``, ``backend``,
    ``tactic``, ``source`` and ``dropped`` (candidate -> why) when tuned, else ``error``."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results: dict[int, dict] = {}
    excluded: dict[int, dict[str, str]] = {}
    restarts: dict[int, int] = {}
    start = 0
    while start < len(specs):
        rc, events, tail, stalled = _run_worker({"problems": specs, "start": start, "force": force,
                                                 "excluded": {str(i): v for i, v in excluded.items()}}, say)
        current, label = None, None
        for ev in events:
            if ev["event"] == "problem":
                current, label = ev["index"], None
            elif ev["event"] == "candidate":
                label = ev["label"]
            elif ev["event"] == "result":
                results[ev["index"]] = ev["result"]
                current, label = None, None
        if rc == 0 and current is None:
            break
        how = (f"made no progress for {stalled:g} s ({ENV_STALL}); killed" if stalled is not None
               else _describe_exit(rc))
        errors = [ln.strip() for ln in tail.splitlines() if "error" in ln.lower()]
        last = errors[-1] if errors else ""  # e.g. "CUDA error: an illegal memory access ..."
        if current is None:  # died between problems (start-up, import): nothing to leave out
            current = next((i for i in range(start, len(specs)) if i not in results), len(specs))
            if current == len(specs):
                break
            results[current] = {"error": f"the tuning worker died before tuning ({how}): {last}"}
            start = current + 1
            continue
        restarts[current] = restarts.get(current, 0) + 1
        if label is None or label == "runoff" or restarts[current] > MAX_RESTARTS_PER_PROBLEM:
            where = "in the runoff" if label == "runoff" else ("outside a candidate" if label is None
                                                               else f"after {MAX_RESTARTS_PER_PROBLEM} restarts")
            results[current] = {"error": f"the tuning worker died {where} ({how}): {last}"}
            say(f"  problem {current + 1}/{len(specs)} given up: the worker died {where} ({how})")
            start = current + 1
            continue
        verb = "hung the tuning worker" if stalled is not None else "killed the tuning worker"
        reason = f"{verb} ({how}{': ' + last if last and stalled is None else ''})"
        excluded.setdefault(current, {})[label] = reason
        say(f"  {label}: {reason}; restarting the worker without it")
        start = current
    return [results.get(i, {"error": "not tuned"}) for i in range(len(specs))]


def _worker(spec: dict) -> int:
    from fp4core import api
    from fp4core.dispatch.tuner import TuningAborted, isolation, tactic_label
    status = open(spec["status"], "a", buffering=1)  # line-buffered: each event reaches the file

    def event(**kw):
        status.write(json.dumps(kw) + "\n")
        status.flush()
        os.fsync(status.fileno())

    problems = spec["problems"]
    for i in range(spec["start"], len(problems)):
        kw = dict(problems[i])
        kw["out_dtype"] = _DTYPES[kw["out_dtype"]]
        event(event="problem", index=i)
        try:
            problem = api.make_problem(kw.pop("m"), kw.pop("n"), kw.pop("k"), **kw)
            with isolation(spec["excluded"].get(str(i), {}), lambda label: event(event="candidate", label=label)):
                [exp] = api.tune([problem], force=spec["force"], verbose=True)
            c = exp.choice
            result = {"key": exp.cache_key, "backend": c.backend.name, "tactic": tactic_label(c.tactic),
                      "source": c.source, "dropped": dict(exp.cache_entry.dropped) if exp.cache_entry else {}}
        except TuningAborted as exc:
            print(f"fp4core tune worker: {exc}", file=sys.stderr, flush=True)
            return 3  # the context is gone: the parent restarts without exc.candidate
        except Exception as exc:  # this problem failed; the next may not
            result = {"error": f"{type(exc).__name__}: {exc}"}
        event(event="result", index=i, result=result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fp4core.dispatch.tune_worker SPEC_JSON_FILE`` (started by ``tune_isolated``)."""
    argv = sys.argv[1:] if argv is None else argv
    return _worker(json.loads(Path(argv[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main())
