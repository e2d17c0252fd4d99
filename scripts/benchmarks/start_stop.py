"""Family 5: start and stop. For `arena-trace -p PID` and `arena-trace run -- CMD` as a user runs them:
time from the command's start to its "attached N probes" line, the footer's attach_seconds/detach_seconds,
the time from the target's exit to the CLI's exit, and the CLI's whole wall time. Then, inside one process
with the tracer's own classes, how detach time splits between uprobes and syscall tracepoints."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ARENA_TRACE,
    PYTHON,
    REPOSITORY,
    WORKLOAD,
    BenchmarkError,
    Workload,
    arena_trace_tracer,
    read_footer,
    summary,
)

# Plans and attaches exactly what `arena-trace -p PID` would, then times the removal step by step: all
# uprobes in parallel (as the tracer does), then the tracepoints, then one uprobe and one tracepoint alone.
_SPLIT_CHILD = r"""
import json, sys, time
from arena_trace.tracer.attach import Attachment
from arena_trace.tracer.probe_plan import detect_allocators, plan_probes
pid, full = int(sys.argv[1]), sys.argv[2] == "full"
plan = plan_probes(pid, detect_allocators(pid, "auto", ()), full=full)
attachment = Attachment(plan)
started = time.monotonic(); attachment.compile(); compiled = time.monotonic()
attachment.attach(); attached = time.monotonic()
bpf = attachment.bpf
uprobe_events = list(bpf.uprobe_fds)
tracepoints = list(bpf.tracepoint_fds)
# One of each alone first: the per-probe cost without overlap.
single_uprobe = single_tracepoint = None
if uprobe_events:
    t = time.monotonic(); bpf.detach_uprobe_event(uprobe_events[0]); single_uprobe = time.monotonic() - t
if tracepoints:
    t = time.monotonic(); bpf.detach_tracepoint(tracepoints[0]); single_tracepoint = time.monotonic() - t
t = time.monotonic()
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(max_workers=min(32, max(1, len(uprobe_events) - 1))) as pool:
    list(pool.map(bpf.detach_uprobe_event, uprobe_events[1:]))
parallel_uprobes = time.monotonic() - t
t = time.monotonic()
for tracepoint in tracepoints[1:]:
    bpf.detach_tracepoint(tracepoint)
sequential_tracepoints = time.monotonic() - t
t = time.monotonic(); attachment.close(); closed = time.monotonic() - t
print(json.dumps({"compile_s": compiled - started, "attach_s": attached - compiled,
                  "uprobe_events": len(uprobe_events), "tracepoints": len(tracepoints),
                  "single_uprobe_detach_s": single_uprobe, "single_tracepoint_detach_s": single_tracepoint,
                  "other_uprobes_parallel_detach_s": parallel_uprobes,
                  "other_tracepoints_sequential_detach_s": sequential_tracepoints, "close_s": closed}))
"""

_SHORT_RUN = ["--scenario", "fastpath", "--threads", "1", "--iterations", "1000"]


def _record_mode(directory: Path, full: bool) -> dict[str, Any]:
    trace_path = Path(directory) / "start-stop.atrace"
    workload = Workload(_SHORT_RUN)
    tracer = arena_trace_tracer(trace_path, full=full)
    try:
        tracer.command = [part.replace("{pid}", str(workload.pid)) for part in tracer.command]
        tracer.start()
        workload.release()
        workload.wait()
        exited = time.monotonic()
        tracer.stop()
    finally:
        workload.kill()
    if tracer.process.returncode != 0:
        raise BenchmarkError(f"arena-trace -p exited with {tracer.process.returncode}: {tracer.output()[-300:]}")
    footer = read_footer(trace_path)
    return {"ready_s": tracer.ready_at - tracer.started_at, "attach_s": footer.get("attach_seconds"),
            "detach_s": footer.get("detach_seconds"), "exit_to_cli_exit_s": tracer.ended_at - exited,
            "cli_wall_s": tracer.ended_at - tracer.started_at}


def _run_mode(directory: Path) -> dict[str, Any]:
    trace_path = Path(directory) / "start-stop-run.atrace"
    started = time.monotonic()
    process = subprocess.Popen([str(ARENA_TRACE), "run", "-o", str(trace_path), "--force", "--top", "3", "--",
                                str(WORKLOAD), *_SHORT_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=REPOSITORY)
    ready = None
    for raw in iter(process.stderr.readline, b""):
        if ready is None and raw.startswith(b"arena-trace: attached"):
            ready = time.monotonic() - started
    process.communicate()
    wall = time.monotonic() - started
    if process.returncode != 0 or ready is None:
        raise BenchmarkError(f"arena-trace run exited with {process.returncode}")
    footer = read_footer(trace_path)
    return {"ready_s": ready, "attach_s": footer.get("attach_seconds"), "detach_s": footer.get("detach_seconds"),
            "cli_wall_s": wall}


def _split(full: bool) -> dict[str, Any]:
    workload = Workload(_SHORT_RUN)
    try:
        completed = subprocess.run([str(PYTHON), "-c", _SPLIT_CHILD, str(workload.pid), "full" if full else "default"],
                                   capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
    finally:
        workload.kill()
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchmarkError(f"detach split failed: {last}")
    return json.loads(completed.stdout)


def run(repetitions: int, log) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"record_default": [], "record_full": [], "run_default": []}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as directory:
        for repetition in range(repetitions):
            for name, action in (("record_default", lambda: _record_mode(directory, False)),
                                 ("record_full", lambda: _record_mode(directory, True)),
                                 ("run_default", lambda: _run_mode(directory))):
                try:
                    sample = action()
                except BenchmarkError as error:
                    errors.append(f"{name}: {error}")
                    log(f"  {name}: failed: {error}")
                    continue
                samples[name].append(sample)
                log(f"  rep {repetition + 1}/{repetitions} {name:<15} attached after {sample['ready_s']:.2f} s, "
                    f"detach {sample['detach_s']:.2f} s, CLI {sample['cli_wall_s']:.2f} s")
    modes = {}
    for name, rows in samples.items():
        keys = rows[0].keys() if rows else ()
        modes[name] = {key: summary([row[key] for row in rows if row[key] is not None]) for key in keys}
    splits = {}
    for tier in ("default", "full"):
        try:
            splits[tier] = _split(tier == "full")
            log(f"  detach split ({tier}): {json.dumps(splits[tier])}")
        except BenchmarkError as error:
            errors.append(str(error))
            log(f"  {error}")
    return {"repetitions": repetitions, "modes": modes, "detach_split": splits, "errors": errors}
