"""Targets and tracer processes for the reliability and bad-input tests (real processes, real probes)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.kernel_objects import ProbeSite, bpf_program_ids, probe_sites

HELPERS = Path(__file__).resolve().parent
REPOSITORY = HELPERS.parent.parent
WORKLOAD = REPOSITORY / "native_alloc" / "build" / "arena-workload"


def compile_helper(source: str, output: Path, *flags: str) -> Path:
    """Build one of the small C targets in tests/helpers/ (gcc is part of the CI image, as for native_alloc)."""
    if not output.exists():
        subprocess.run(["gcc", "-O1", "-o", str(output), str(HELPERS / source), *flags], check=True)
    return output


def workload_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("MALLOC_ARENA_MAX", None)
    environment.update(extra or {})
    return environment


def start_workload(arguments: list[str], environment: dict[str, str] | None = None,
                   wait_signal: bool = False) -> subprocess.Popen:
    """arena-workload with its JSON report on a pipe; with ``wait_signal`` it waits for SIGUSR1."""
    process = subprocess.Popen([str(WORKLOAD), *arguments, *(["--wait-signal"] if wait_signal else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=workload_environment(environment))
    if wait_signal:
        line = process.stderr.readline()
        assert line.startswith("ready"), line
    else:
        wait_for_libraries(process.pid)
    return process


def wait_for_libraries(pid: int, timeout: float = 10.0) -> None:
    """Until the dynamic loader has mapped libc (the tracer needs it to plan its probes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "libc.so" in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never mapped libc")


def finish_workload(process: subprocess.Popen, timeout: float = 120) -> dict[str, Any]:
    """The workload's own verdict: exit status 0 (no crash, no signal) and no failed pattern check."""
    output, errors = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"workload exit status {process.returncode}: {errors[-2000:]}"
    report = json.loads(output)
    assert report["verify_errors"] == 0, report
    return report


def arena_trace_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "arena_trace", *arguments]


@dataclass
class TracerProcess:
    """An arena-trace process watched from outside: its BPF programs are noted once it has attached."""

    process: subprocess.Popen
    target_pid: int | None
    program_ids: set[int] = field(default_factory=set)
    sites: list[ProbeSite] = field(default_factory=list)
    early_stderr: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_attached(self, timeout: float = 90.0) -> None:
        """Read stderr up to the 'attached N probes' progress line, then note the programs it holds."""
        deadline = time.monotonic() + timeout
        stream = self.process.stderr
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stream], [], [], 0.5)
            if not ready:
                if self.process.poll() is not None:
                    break
                continue
            line = stream.readline()
            if not line:
                break
            self.early_stderr += line
            if "attached" in line and "probes" in line:
                self.program_ids = bpf_program_ids(self.pid)
                assert self.program_ids, "the tracer says it attached but holds no BPF program"
                return
        raise AssertionError(f"tracer never attached: {self.early_stderr[-2000:]}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def finish(self, timeout: float = 120) -> int:
        stdout, stderr = self.process.communicate(timeout=timeout)
        self.stdout, self.stderr = stdout, self.early_stderr + stderr
        return self.process.returncode


def start_tracer(arguments: list[str], target_pid: int | None, environment: dict[str, str] | None = None
                 ) -> TracerProcess:
    process = subprocess.Popen(arena_trace_command(*arguments), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment)
    tracer = TracerProcess(process, target_pid)
    if target_pid is not None:
        tracer.sites = probe_sites(target_pid)
    return tracer


def stop_quietly(process: subprocess.Popen) -> None:
    """Cleanup for a test that failed half-way: no process of ours outlives the test."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
