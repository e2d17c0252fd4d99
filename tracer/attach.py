"""Compile the BPF program for a plan and attach its uprobes, uretprobes and tracepoints to one process."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from arena_trace.probes.catalog import Role, Tier
from arena_trace.tracer.bpf_program import (
    SETTING_MAIN_ARENA,
    Classify,
    Stream,
    SyscallHandler,
    UprobeHandler,
    program_source,
)
from arena_trace.tracer.probe_plan import PlannedProbe, ProbePlan

from arena_trace.errors import AttachError, EnvironmentProblem, TargetError

# Syscalls that change the address space are streamed wherever they happen; futex only inside
# allocator calls (or when it is an arena lock), the rest of the target's futexes are only counted.
ALWAYS_STREAMED_SYSCALLS = {"brk", "mmap", "munmap", "mprotect", "madvise"}


def import_bcc():
    try:
        import bcc  # noqa: PLC0415 - optional system package, only needed for live tracing
    except ImportError:
        raise EnvironmentProblem("bcc is not importable: install python3-bpfcc and run arena-trace from the "
                                 "project venv (scripts/setup), see `arena-trace doctor`") from None
    return bcc


def _classify(probe: PlannedProbe) -> Classify:
    if probe.spec.role != Role.LOCK_WAIT:
        return Classify.NONE
    return Classify.GLIBC_LOCK if probe.allocator.catalog.name == "glibc" else Classify.ALWAYS_ARENA


def handlers_for(plan: ProbePlan) -> list[UprobeHandler | SyscallHandler]:
    handlers: list[UprobeHandler | SyscallHandler] = []
    fast_stream = Stream.BATCHED if plan.stream_full else Stream.NEVER
    for probe in plan.probes:
        if probe.probe_address is None:
            continue
        slow = probe.spec.tier == Tier.SLOW
        handlers.append(UprobeHandler(
            function_id=probe.function_id,
            argument_registers=tuple(argument.register for argument in probe.spec.arguments[:2]),
            classify=_classify(probe),
            stream=Stream.ALWAYS if slow else fast_stream,
            want_stack=slow and probe.spec.stack,
            probe_address=probe.probe_address,
            main_arena_address=probe.allocator.main_arena_symbol or 0,
        ))
    for function_id, syscall in plan.syscalls:
        stream = Stream.ALWAYS if syscall.name in ALWAYS_STREAMED_SYSCALLS else Stream.NESTED
        handlers.append(SyscallHandler(function_id, syscall.name, stream))
    return handlers


@contextlib.contextmanager
def captured_descriptor_stderr() -> Iterator[io.StringIO]:
    """Capture what C code (clang inside bcc, libbcc's attach messages) writes to file descriptor 2.

    contextlib.redirect_stderr only swaps sys.stderr; without this a failed compile dumps hundreds of
    clang lines on the user's terminal instead of our one-line message.
    """
    captured = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(captured):
                yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.write(sink.read().decode(errors="replace"))


def _first_error_line(text: str) -> str | None:
    return next((line.strip() for line in text.splitlines() if "error:" in line), None)


@dataclass
class AttachResult:
    attached: int  # allocator functions probed (entry and return)
    failed: int
    syscalls: int  # syscalls traced (enter and exit tracepoints)
    seconds: float


class Attachment:
    """The loaded BPF program and its probes; ``detach`` is idempotent and safe from any exit path."""

    def __init__(self, plan: ProbePlan) -> None:
        self.plan = plan
        self.bpf = None
        self.uprobes_attached = 0
        # Syscall tracepoints bcc attached when the program loaded, so attach() can restore them after
        # detach_probes(): one compiled program can then be attached and detached repeatedly.
        self._tracepoints: dict[bytes, bytes] = {}

    def compile(self) -> None:
        bcc = import_bcc()
        source = program_source(self.plan.pid, handlers_for(self.plan))
        try:
            # bcc prints compiler noise on stderr; keep it for the error message only.
            with captured_descriptor_stderr() as captured:
                self.bpf = bcc.BPF(text=source)
        except Exception as error:  # noqa: BLE001 - bcc raises bare Exception for every failure
            message = _first_error_line(captured.getvalue()) or \
                (str(error).splitlines()[0] if str(error) else type(error).__name__)
            if os.geteuid() != 0:
                raise EnvironmentProblem("loading BPF needs root (or CAP_BPF and CAP_PERFMON): "
                                         "rerun with sudo") from None
            raise EnvironmentProblem(f"cannot compile/load the BPF program: {message} "
                                     "(kernel headers? see `arena-trace doctor`)") from None
        self._tracepoints = {name: b"tracepoint__" + name.replace(b":", b"__")
                             for name in getattr(self.bpf, "tracepoint_fds", {})}

    def set_main_arena(self, address: int) -> None:
        settings = self.bpf["settings"]
        settings[settings.Key(SETTING_MAIN_ARENA)] = settings.Leaf(address)

    def main_arena(self) -> int:
        settings = self.bpf["settings"]
        return int(settings[settings.Key(SETTING_MAIN_ARENA)].value)

    def attach(self, probes: Sequence[PlannedProbe] | None = None) -> AttachResult:
        """Attach every planned probe and the syscall tracepoints, or only ``probes`` (a subset of the
        plan, without tracepoints: the reliability tests cycle small sets against a busy target)."""
        if self.bpf is None:
            self.compile()
        started = time.monotonic()
        attached = failed = 0
        if probes is None:
            probes = self.plan.probes
            for tracepoint, function_name in self._tracepoints.items():
                if tracepoint not in self.bpf.tracepoint_fds:
                    self.bpf.attach_tracepoint(tp=tracepoint, fn_name=function_name)
        # libbcc prints "cannot attach uprobe..." on fd 2 for each failed try; the failures are
        # reported per probe (probe.error) instead.
        with captured_descriptor_stderr():
            for probe in probes:
                if probe.probe_address is None:
                    failed += 1
                    continue
                if self._attach_probe(probe):
                    attached += 1
                else:
                    failed += 1
        if not os.path.exists(f"/proc/{self.plan.pid}/maps"):
            raise TargetError(f"process {self.plan.pid} exited while arena-trace was attaching")
        if attached == 0 and not self.plan.syscalls:
            raise AttachError("no probe could be attached")
        # The syscall tracepoints were attached when the program loaded.
        return AttachResult(attached, failed, len(self.plan.syscalls), time.monotonic() - started)

    def _attach_probe(self, probe: PlannedProbe) -> bool:
        library = probe.allocator.host_path
        address = probe.probe_address
        last_error = ""
        # Attaching fails spuriously about 1 in 10 times on these VMs: retry once.
        for _attempt in range(2):
            try:
                self.bpf.attach_uprobe(name=library, addr=address, fn_name=f"entry_{probe.function_id}",
                                       pid=self.plan.pid)
                try:
                    self.bpf.attach_uretprobe(name=library, addr=address, fn_name=f"return_{probe.function_id}",
                                              pid=self.plan.pid)
                except Exception:
                    self._detach_one(library, address, retprobe=False)
                    raise
                probe.attached = True
                probe.error = None
                self.uprobes_attached += 2
                return True
            except Exception as error:  # noqa: BLE001 - bcc raises bare Exception
                last_error = str(error).splitlines()[0] if str(error) else type(error).__name__
                if not os.path.exists(f"/proc/{self.plan.pid}"):
                    break
        probe.error = f"attach failed: {last_error}"
        return False

    def _detach_one(self, library: str, address: int, retprobe: bool) -> None:
        with contextlib.suppress(Exception):
            if retprobe:
                self.bpf.detach_uretprobe(name=library, addr=address, pid=self.plan.pid)
            else:
                self.bpf.detach_uprobe(name=library, addr=address, pid=self.plan.pid)

    def detach_probes(self) -> float:
        """Remove every probe but keep the maps and ring buffers readable; returns the seconds it took."""
        if self.bpf is None:
            return 0.0
        started = time.monotonic()
        # Each uprobe removal waits for an RCU grace period (~100 ms here); in parallel they overlap.
        events = list(getattr(self.bpf, "uprobe_fds", {}))
        if events:
            with ThreadPoolExecutor(max_workers=min(32, len(events))) as pool:
                list(pool.map(self._detach_event, events))
        for tracepoint in list(getattr(self.bpf, "tracepoint_fds", {})):
            with contextlib.suppress(Exception):
                self.bpf.detach_tracepoint(tracepoint)
        return time.monotonic() - started

    def _detach_event(self, event_name: str) -> None:
        with contextlib.suppress(Exception):
            self.bpf.detach_uprobe_event(event_name)

    def close(self) -> None:
        """Detach anything left and free the program and maps; idempotent."""
        if self.bpf is None:
            return
        with contextlib.suppress(Exception):
            self.bpf.cleanup()
        self.bpf = None
