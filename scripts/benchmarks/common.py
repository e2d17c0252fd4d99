"""What every benchmark family shares: paths, statistics, machine facts, and the two kinds of process a
benchmark drives — the workload (started with --wait-signal, released with SIGUSR1) and a tracer (arena-trace
or a third-party tool) attached to it with -p PID, as a user would run them."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
WORKLOAD = REPOSITORY / "native_alloc" / "build" / "arena-workload"
ARENA_TRACE = REPOSITORY / ".venv" / "bin" / "arena-trace"
PYTHON = REPOSITORY / ".venv" / "bin" / "python"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(RuntimeError):
    """A run that produced no usable measurement; the message says why (it ends up in the row's note)."""


def summary(values: Sequence[float]) -> dict[str, Any]:
    """min/median/max of a sample, plus the spread that tells how noisy it was."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None, "spread": None, "values": []}
    low, high = min(values), max(values)
    return {"n": len(values), "min": low, "median": statistics.median(values), "max": high,
            "spread": (high / low) if low > 0 else None, "values": list(values)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _command_output(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu_model == "unknown":
            cpu_model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    try:
        import bcc  # noqa: PLC0415 - Debian's package, linked into the venv by scripts/setup

        bcc_version = getattr(bcc, "__version__", "unknown")
    except ImportError as error:
        bcc_version = f"not importable ({error})"
    memory_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model,
        "hypervisor": "hypervisor" in flags,
        "vcpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "glibc": libc.gnu_get_libc_version().decode(),
        "bcc": bcc_version,
        "bpftrace": _command_output(["bpftrace", "--version"]),
        "python": platform.python_version(),
        "hardware_counters": Path("/sys/bus/event_source/devices/cpu").exists(),
        "arena_trace_commit": _command_output(["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"]),
    }


class _LineReader:
    """Drains a pipe on a thread (so the child never blocks on a full pipe) and lets the caller wait for a line."""

    def __init__(self, stream) -> None:
        self.lines: list[tuple[float, str]] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._condition:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._condition.notify_all()
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, str] | None:
        """The first line matching ``pattern`` and when it arrived, or None on timeout or end of stream."""
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for arrived, line in self.lines:
                    if expression.search(line):
                        return arrived, line
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def text(self, wait: float = 5.0) -> str:
        self._thread.join(wait)
        with self._condition:
            return "\n".join(line for _arrived, line in self.lines)


@dataclass
class WorkloadResult:
    report: dict[str, Any]
    elapsed_ns: int  # the workload's own measure: from releasing its workers to joining them
    wall_ns: int  # SIGUSR1 to the process's exit, seen from outside
    tracer_cpu_seconds: float | None = None  # CPU the tracer used while the workload worked
    released_ns: int = 0  # CLOCK_MONOTONIC, the clock of the trace's event timestamps
    exited_ns: int = 0

    @property
    def calls(self) -> dict[str, int]:
        return self.report.get("calls", {})


class Workload:
    """arena-workload started with --wait-signal: it maps its libraries and waits, so a tracer can attach
    before any counted work, and elapsed_ns covers only the work."""

    def __init__(self, arguments: Sequence[str], environment: dict[str, str] | None = None) -> None:
        if not WORKLOAD.exists():
            raise BenchmarkError(f"{WORKLOAD.relative_to(REPOSITORY)} is not built: run scripts/setup")
        self.process = subprocess.Popen([str(WORKLOAD), *arguments, "--wait-signal"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, **(environment or {})})
        self.pid = self.process.pid
        self._stderr = _LineReader(self.process.stderr)
        self._released_at = 0.0
        self.released_ns = 0
        if self._stderr.wait_for(r"^ready pid=", 30) is None:
            self.process.kill()
            raise BenchmarkError(f"workload never became ready: {self._stderr.text(1)[-300:]}")

    def release(self) -> None:
        self._released_at = time.monotonic()
        self.released_ns = time.monotonic_ns()
        os.kill(self.pid, signal.SIGUSR1)

    def wait(self, timeout: float = 600) -> WorkloadResult:
        output, _ = self.process.communicate(timeout=timeout)
        exited_ns = time.monotonic_ns()
        wall_ns = int((time.monotonic() - self._released_at) * 1e9)
        if self.process.returncode != 0:
            raise BenchmarkError(f"workload exited with status {self.process.returncode}: "
                                 f"{self._stderr.text(1)[-300:]}")
        report = json.loads(output)
        return WorkloadResult(report, int(report["elapsed_ns"]), wall_ns, released_ns=self.released_ns,
                              exited_ns=exited_ns)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def perf_event_descriptors(pid: int) -> int:
    """How many perf events (one per attached uprobe, uretprobe or tracepoint) a process holds open."""
    count = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(entry.path) == "anon_inode:[perf_event]":
                    count += 1
            except OSError:
                continue
    except OSError:
        return -1
    return count


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Tracer:
    """A tracing command attached to a workload. ``ready`` says how to tell it has finished attaching."""

    name: str
    command: list[str]
    ready_pattern: str | None = None  # a line on stdout/stderr printed once attached (arena-trace)
    minimum_perf_events: int = 1  # otherwise: this many perf events open and unchanged for a moment
    stops_by_itself: bool = False  # arena-trace -p ends when its target exits
    process: subprocess.Popen | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    ready_at: float = field(default=0.0, init=False)
    ended_at: float = field(default=0.0, init=False)
    _stdout: _LineReader | None = field(default=None, init=False)
    _stderr: _LineReader | None = field(default=None, init=False)

    def start(self, timeout: float = 120) -> None:
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=REPOSITORY, start_new_session=True)
        self._stdout = _LineReader(self.process.stdout)
        self._stderr = _LineReader(self.process.stderr)
        if self.ready_pattern is not None:
            found = self._stderr.wait_for(self.ready_pattern, timeout)
            if found is None:
                self.stop()
                raise BenchmarkError(f"{self.name} did not attach: {self.output()[-400:]}")
            self.ready_at = found[0]
            return
        self._wait_for_perf_events(timeout)

    def _wait_for_perf_events(self, timeout: float) -> None:
        # bcc tools and bpftrace print their banner before or while attaching; the perf event descriptors
        # they hold are the ground truth. Ready = at least the expected number, unchanged for 0.3 s.
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"{self.name} exited with status {self.process.returncode} before "
                                     f"attaching: {self.output()[-400:]}")
            count = perf_event_descriptors(self.process.pid)
            now = time.monotonic()
            if count != last:
                last, stable_since = count, now
            elif count >= self.minimum_perf_events and now - stable_since >= 0.3:
                self.ready_at = stable_since
                return
            time.sleep(0.02)
        self.stop()
        raise BenchmarkError(f"{self.name} did not attach within {timeout:.0f} s ({last} perf events open)")

    def stop(self, timeout: float = 120) -> int:
        """Ends the tracer (Ctrl-C, as a user would, unless it stops by itself) and returns its status."""
        if self.process is None:
            return -1
        if self.process.poll() is None and not self.stops_by_itself:
            with contextlib.suppress(ProcessLookupError):  # bpftrace -p may end with its target
                os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.ended_at = time.monotonic()
        return self.process.returncode

    def output(self) -> str:
        parts = [reader.text(2) for reader in (self._stdout, self._stderr) if reader is not None]
        return "\n".join(part for part in parts if part)


def traced_run(workload_arguments: Sequence[str], tracer: Tracer | None,
               environment: dict[str, str] | None = None,
               during: Callable[[Workload, Tracer | None], None] | None = None) -> WorkloadResult:
    """One workload run, untraced (``tracer`` None) or with ``tracer`` attached before the work starts."""
    workload = Workload(workload_arguments, environment)
    try:
        if tracer is not None:
            tracer.command = [part.replace("{pid}", str(workload.pid)) for part in tracer.command]
            tracer.start()
        if during is not None:
            during(workload, tracer)
        # The tracer's CPU over the work window: its consumer competes with the workload for ~1 core here.
        cpu_before = process_cpu_seconds(tracer.process.pid) if tracer is not None else None
        workload.release()
        result = workload.wait()
        cpu_after = process_cpu_seconds(tracer.process.pid) if tracer is not None else None
        if cpu_before is not None and cpu_after is not None:
            result.tracer_cpu_seconds = cpu_after - cpu_before
    finally:
        workload.kill()
        if tracer is not None and tracer.process is not None:
            status = tracer.stop()
            if status not in (0, -signal.SIGINT, 130):
                raise BenchmarkError(f"{tracer.name} exited with status {status}: {tracer.output()[-400:]}")
    return result


def arena_trace_tracer(trace_path: Path, full: bool = False, extra: Sequence[str] = ()) -> Tracer:
    command = [str(ARENA_TRACE), "-p", "{pid}", "-o", str(trace_path), "--force", "--top", "3"]
    if full:
        command.append("--full")
    return Tracer(name="arena-trace" + (" --full" if full else ""), command=[*command, *extra],
                  ready_pattern=r"^arena-trace: attached probes", stops_by_itself=True)


def read_footer(trace_path: Path) -> dict[str, Any]:
    from arena_trace.analysis.trace_reader import read_trace  # noqa: PLC0415 - heavy import, only when needed

    return read_trace(trace_path).footer


def format_ns(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1e9:
        return f"{value / 1e9:.3f} s"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f} µs"
    return f"{value:.0f} ns"


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}×"
