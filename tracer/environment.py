"""Checks that this machine can trace, each with the command that fixes it (used by `arena-trace doctor`)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
SYS_BPF = 321  # x86-64
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2
SETUP_HINT = "sudo scripts/setup (from the arena-trace checkout)"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def effective_capabilities(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(euid: int | None = None, status_text: str | None = None) -> Check:
    euid = os.geteuid() if euid is None else euid
    if status_text is None:
        status_text = Path("/proc/self/status").read_text()
    capabilities = effective_capabilities(status_text)
    has = lambda bit: bool(capabilities >> bit & 1)  # noqa: E731
    if euid == 0 or (has(CAP_BPF) and has(CAP_PERFMON)) or has(CAP_SYS_ADMIN):
        return Check("privileges", True, "root" if euid == 0 else "CAP_BPF and CAP_PERFMON")
    return Check("privileges", False, "not root and no CAP_BPF+CAP_PERFMON",
                 "run with sudo, or grant: setcap cap_bpf,cap_perfmon+ep on the venv's python")


def check_bpf_syscall() -> Check:
    libc = ctypes.CDLL(None, use_errno=True)
    attributes = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    descriptor = libc.syscall(SYS_BPF, BPF_MAP_CREATE, ctypes.byref(attributes), ctypes.sizeof(attributes))
    if descriptor >= 0:
        os.close(descriptor)
        return Check("bpf syscall", True, "created a BPF map")
    error = ctypes.get_errno()
    return Check("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(error)}",
                 "run as root; check kernel.unprivileged_bpf_disabled and that the kernel has CONFIG_BPF_SYSCALL")


def check_tracefs(tracefs: Path = Path("/sys/kernel/tracing")) -> Check:
    if (tracefs / "events" / "syscalls" / "sys_enter_brk").is_dir():
        return Check("tracefs", True, f"{tracefs} with syscall tracepoints")
    if (tracefs / "events").is_dir():
        return Check("tracefs", False, "no syscall tracepoints", "a kernel with CONFIG_FTRACE_SYSCALLS is needed")
    return Check("tracefs", False, f"{tracefs} is not mounted", f"mount -t tracefs tracefs {tracefs}")


def check_uprobe_events(devices: Path = Path("/sys/bus/event_source/devices")) -> Check:
    if (devices / "uprobe" / "type").exists():
        return Check("uprobe events", True, "uprobe PMU present")
    return Check("uprobe events", False, "no uprobe PMU", "a kernel with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS")


def check_headers(modules: Path | None = None) -> Check:
    modules = modules or Path("/lib/modules") / platform.release()
    build = modules / "build"
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return Check("kernel headers", True, f"{build} -> {os.path.realpath(build)}")
    return Check("kernel headers", False, f"{build} missing",
                 f"apt-get install linux-headers-amd64, then {SETUP_HINT} links them for this kernel")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        return Check("bcc", False, f"`import bcc` fails in {sys.executable}",
                     f"apt-get install python3-bpfcc libbpfcc, then run from the project venv: {SETUP_HINT}")
    return Check("bcc", True, "bcc imports")


def check_bcc_uprobe() -> Check:
    """Compile a trivial program and attach a uprobe to a short-lived child: the whole path works."""
    try:
        from bcc import BPF  # noqa: PLC0415
    except ImportError:
        return Check("bcc compile + uprobe", False, "bcc missing", f"see the bcc check; {SETUP_HINT}")
    child = subprocess.Popen(["sleep", "5"])
    try:
        program = BPF(text="int probe(struct pt_regs *ctx) { return 0; }")
        program.attach_uprobe(name="c", sym="malloc", fn_name="probe", pid=child.pid)
        program.cleanup()
    except Exception as error:  # noqa: BLE001 - bcc raises bare Exception
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Check("bcc compile + uprobe", False, first, f"check kernel headers and privileges; {SETUP_HINT}")
    finally:
        child.kill()
        child.wait()
    return Check("bcc compile + uprobe", True, "compiled a program and attached a uprobe to libc malloc")


def check_libc_debug(debug_root: Path = Path("/usr/lib/debug")) -> Check:
    from arena_trace.tracer.elf_file import ElfError, open_elf  # noqa: PLC0415
    from arena_trace.tracer.process_maps import find_libc, modules  # noqa: PLC0415

    libc = find_libc(modules(os.getpid()))
    if libc is None:
        return Check("libc debug symbols", False, "libc not found in this process", "")
    try:
        with open_elf(libc.host_path) as binary:
            build_id = binary.build_id
    except ElfError as error:
        return Check("libc debug symbols", False, str(error), "")
    if build_id and (debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug").exists():
        return Check("libc debug symbols", True, f"build-id {build_id}")
    return Check("libc debug symbols", False, f"no debug file for {libc.path} (build-id {build_id}): "
                 "sysmalloc, arena_get2 and other internals cannot be traced", "apt-get install libc6-dbg")


ALL_CHECKS: tuple[Callable[[], Check], ...] = (check_privileges, check_bpf_syscall, check_tracefs,
                                              check_uprobe_events, check_headers, check_bcc, check_bcc_uprobe,
                                              check_libc_debug)


def run_checks() -> list[Check]:
    results = []
    for check in ALL_CHECKS:
        try:
            results.append(check())
        except Exception as error:  # noqa: BLE001 - a broken check is a failed check, never a traceback
            results.append(Check(check.__name__.removeprefix("check_"), False, f"check failed: {error}"))
    return results
