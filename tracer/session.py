"""One recording, start to finish: plan, attach, collect until the duration, Ctrl-C/SIGTERM or the target's
exit, detach, and hand back the Trace (also written to a file when asked). Every exit path detaches."""

from __future__ import annotations

import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_trace.tracer import process_maps
from arena_trace.tracer.attach import Attachment
from arena_trace.tracer.collector import Collector
from arena_trace.tracer.probe_plan import ProbePlan
from arena_trace.tracer.stack_resolver import StackResolver
from arena_trace.tracer.trace_format import Trace
from arena_trace.tracer.trace_writer import TraceWriter

from arena_trace import __version__
from arena_trace.errors import TargetError

POLL_SECONDS = 0.05
THREAD_REFRESH_SECONDS = 0.5
AGGREGATE_SNAPSHOT_SECONDS = 2.0


@dataclass
class RecordOptions:
    duration: float | None = None
    full: bool = False
    allocator: str = "auto"
    output: Path | None = None
    force: bool = False
    debug_directories: tuple[str, ...] = ()


@dataclass
class Target:
    """The traced process; ``exited`` tells whether it is gone (and with what status, when we started it)."""

    pid: int
    exit_status: Callable[[], int | None] | None = None  # for a child we started
    status: int | None = field(default=None, init=False)

    def exited(self) -> bool:
        if self.exit_status is not None:
            self.status = self.exit_status()
            return self.status is not None
        return not os.path.exists(f"/proc/{self.pid}/maps") or _is_zombie(self.pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


class _StopFlag:
    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum, reason in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
            self._previous[signum] = signal.signal(signum, lambda *_args, reason=reason: self.stop(reason))
        return self

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __exit__(self, *_exception: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _host() -> dict[str, Any]:
    return {"kernel": platform.release(), "hostname": socket.gethostname(), "machine": platform.machine(),
            "arena_trace": __version__}


def _target_description(pid: int) -> dict[str, Any]:
    description: dict[str, Any] = {"pid": pid}
    try:
        description["comm"] = process_maps.read_comm(pid)
        description["cmdline"] = process_maps.read_cmdline(pid)
        description["start_time"] = os.stat(f"/proc/{pid}").st_mtime
    except (process_maps.ProcessGone, OSError):
        pass
    return description


class Recording:
    def __init__(self, plan: ProbePlan, target: Target, options: RecordOptions,
                 progress: Callable[[str], None] = lambda _message: None) -> None:
        self.plan = plan
        self.target = target
        self.options = options
        self.progress = progress
        self.attachment = Attachment(plan)
        self.threads: dict[int, str] = {}
        self.attach_seconds = 0.0
        self.started = time.monotonic()
        self.detach_seconds = 0.0
        self.writer: TraceWriter | None = None
        # A command started by `run` is still /bin/sh at attach time: its libc mapping is the shell's.
        self.target_started = target.exit_status is None
        self.command_description: dict[str, Any] | None = None

    def _metadata(self) -> dict[str, Any]:
        return {
            "schema": "arena-trace/trace/1",
            "target": _target_description(self.target.pid),
            "host": _host(),
            "allocators": [allocator.describe() for allocator in self.plan.allocators],
            "probes": [probe.describe() for probe in self.plan.probes],
            "functions": self.plan.function_table(),
            "options": {"full": self.options.full, "full_events": self.plan.stream_full,
                        "allocator": self.options.allocator,
                        "duration": self.options.duration},
            "warnings": list(self.plan.warnings),
            "start_ns": time.monotonic_ns(),
            "start_time": time.time(),
        }

    def _refresh_threads(self) -> None:
        try:
            for thread in process_maps.read_threads(self.target.pid):
                self.threads[thread.tid] = thread.name
        except (process_maps.ProcessGone, OSError):
            pass

    def attach(self) -> None:
        self.started = time.monotonic()
        self.attachment.compile()
        self.attach_result = self.attachment.attach()
        if self.target_started and self.plan.locate() and self.plan.main_arena:
            self.attachment.set_main_arena(self.plan.main_arena)

    def _report_attached(self) -> None:
        """Said once everything is ready to record (probes, writer, stack resolver, ring reader), so a user or
        script that starts the interesting work on seeing it never overlaps arena-trace's own set-up."""
        self.attach_seconds = time.monotonic() - self.started
        result = self.attach_result
        failed = f", {result.failed} failed" if result.failed else ""
        allocators = ", ".join(allocator.catalog.name for allocator in self.plan.allocators)
        self.progress(f"attached probes to {result.attached} {allocators} functions{failed} and "
                      f"{result.syscalls} syscalls of PID {self.plan.pid} in {self.attach_seconds:.2f} s")
        for warning in self.plan.warnings:
            self.progress(f"warning: {warning}")
        for probe in self.plan.probes:
            if not probe.attached:
                self.progress(f"warning: {probe.spec.name}: {probe.error}")

    def run(self, on_attached: Callable[[], None] | None = None,
            on_resolver: Callable[[StackResolver], None] | None = None) -> Trace:
        """Attach, collect, detach. ``on_attached`` releases a command started by `arena-trace run`;
        ``on_resolver`` lets its exit holder refresh the maps while the command's address space exists."""
        try:
            self.attach()
            self._refresh_threads()
            metadata = self._metadata()
            # Created after attaching so a failed attach leaves no file behind.
            self.writer = TraceWriter(metadata, self.options.output, force=self.options.force)
            resolver = StackResolver(self.plan.pid, self.options.debug_directories)
            collector = Collector(self.attachment.bpf, self.writer, resolver,
                                  frozenset(function_id for function_id, _ in self.plan.syscalls))
            if on_resolver is not None:
                on_resolver(resolver)
            collector.start_reader()
            self._report_attached()
            if on_attached is not None:
                on_attached()
            exit_reason = self._collect(collector, resolver)
            stopped_ns = time.monotonic_ns()
            detach_started = time.monotonic()
            self.detach_seconds = self.attachment.detach_probes()
            collector.drain()
            aggregates = collector.aggregates()
            counters = collector.counters()
            self.threads.update(collector.exited_thread_names())
            self._learn_main_arena()
            self.attachment.close()
            self.detach_seconds = time.monotonic() - detach_started
            self.writer.set_aggregates(aggregates)
            self._refresh_threads()
            late = {
                "threads": [{"tid": tid, "name": name} for tid, name in sorted(self.threads.items())],
                "maps": resolver.maps_snapshot,
                "allocators": [allocator.describe() for allocator in self.plan.allocators],
                "target": {**metadata["target"], **(self.command_description or {})},
            }
            footer = {
                "end_ns": stopped_ns,
                "duration_ns": stopped_ns - metadata["start_ns"],
                "events_recorded": collector.events_recorded,
                "events_lost": counters["events_lost"],
                "stacks_captured": resolver.stacks_captured,
                "stacks_truncated": resolver.stacks_truncated,
                "stacks_lost": counters["stacks_lost"],
                "stacks_skipped": counters["stacks_skipped"],
                "unresolved_frames": resolver.unresolved_frames,
                "counters": counters,
                "exit_reason": exit_reason,
                "target_exit_status": self.target.status,
                "attach_seconds": round(self.attach_seconds, 4),
                "detach_seconds": round(self.detach_seconds, 4),
                "metadata": late,
            }
            trace = self.writer.close(footer)
            resolver.close()
            self.progress(f"detached in {self.detach_seconds:.2f} s; {collector.events_recorded} events, "
                          f"{resolver.stacks_captured} stacks, {counters['events_lost']} events lost"
                          + (f"; trace written to {self.options.output}" if self.options.output else ""))
            return trace
        finally:
            self.attachment.close()

    def _learn_main_arena(self) -> None:
        """Record the main_arena the BPF program learned (run mode learns it only once libc is mapped)."""
        learned = self.attachment.main_arena()
        for allocator in self.plan.allocators:
            if learned and allocator.main_arena_symbol is not None and allocator.load_bias is None:
                allocator.load_bias = learned - allocator.main_arena_symbol

    def _collect(self, collector: Collector, resolver: StackResolver) -> str:
        deadline = None if self.options.duration is None else time.monotonic() + self.options.duration
        next_threads = next_aggregates = time.monotonic()
        with _StopFlag() as stop:
            while stop.reason is None:
                time.sleep(POLL_SECONDS)
                collector.poll()
                now = time.monotonic()
                if now >= next_threads:
                    next_threads = now + THREAD_REFRESH_SECONDS
                    self._refresh_threads()
                    resolver.refresh_maps()
                if now >= next_aggregates:
                    next_aggregates = now + AGGREGATE_SNAPSHOT_SECONDS
                    collector.flush()
                    self.writer.set_aggregates(collector.aggregates())
                if deadline is not None and now >= deadline:
                    stop.stop("duration")
                elif self.target.exited():
                    stop.stop("target-exited")
            return stop.reason


def check_target(pid: int) -> None:
    """Refuse what cannot be traced, with a one-line reason."""
    try:
        status = process_maps.check_traceable(pid)
    except process_maps.ProcessGone:
        raise TargetError(f"no process with PID {pid}") from None
    except process_maps.NotAProcess as error:
        raise TargetError(str(error)) from None
    if status.is_thread_of_other_process:
        raise TargetError(f"{pid} is a thread of process {status.tgid}: pass -p {status.tgid}")
