"""Helpers for tests that trace real processes: run arena-trace as a user would and collect its outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
WORKLOAD = REPOSITORY / "native_alloc" / "build" / "arena-workload"


def build_native() -> None:
    subprocess.run(["make", "-s", "-C", str(REPOSITORY / "native_alloc")], check=True)


@dataclass
class TracedRun:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any] | None
    workload: dict[str, Any] | None
    trace_path: Path | None


def arena_trace(*arguments: str, env: dict[str, str] | None = None, timeout: float = 120,
                input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arena_trace", *arguments], capture_output=True, text=True,
                          env=env, timeout=timeout, input=input_text)


def run_workload_traced(tmp_path: Path, workload_arguments: list[str], tracer_arguments: list[str] = (),
                        environment: dict[str, str] | None = None, keep_trace: bool = True) -> TracedRun:
    """`arena-trace run --json S [-o T] -- arena-workload ...`; the workload's own JSON is on stdout."""
    summary_path = tmp_path / "summary.json"
    trace_path = tmp_path / "run.atrace" if keep_trace else None
    arguments = ["run", "--json", str(summary_path), "--force", *tracer_arguments]
    if trace_path is not None:
        arguments += ["-o", str(trace_path)]
    env = dict(os.environ)
    env.pop("MALLOC_ARENA_MAX", None)
    env.update(environment or {})
    result = arena_trace(*arguments, "--", str(WORKLOAD), *workload_arguments, env=env)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    try:
        workload = json.loads(result.stdout)
    except json.JSONDecodeError:
        workload = None
    return TracedRun(result.returncode, result.stdout, result.stderr, summary, workload, trace_path)


def start_waiting_workload(arguments: list[str], environment: dict[str, str] | None = None) -> subprocess.Popen:
    """A workload that waits for SIGUSR1 after printing 'ready'; its JSON goes to a pipe."""
    env = dict(os.environ)
    env.pop("MALLOC_ARENA_MAX", None)
    env.update(environment or {})
    process = subprocess.Popen([str(WORKLOAD), *arguments, "--wait-signal"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    line = process.stderr.readline()
    assert line.startswith("ready"), line
    return process


def release(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGUSR1)


def wait_json(process: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, process.returncode
    return json.loads(output)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
