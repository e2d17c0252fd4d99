"""Independent evidence of what a tracer left in the kernel and in the target, for the reliability tests.

Nothing here uses arena-trace's own bookkeeping: BPF programs are found through /proc/PID/fdinfo and the
bpf(2) syscall, breakpoints by reading the target's code through /proc/PID/mem and comparing it with the
library file. The kernel shows a uprobe there as an int3 byte, or, once a uprobe on a 5-byte nop has
been hit on kernels with uprobe optimization (6.16+), as a call to its trampoline: either way the code
differs from the file while a probe is armed and must equal it afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYS_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
TRACEFS = Path("/sys/kernel/tracing")
SITE_BYTES = 5  # an int3 changes the first byte, an optimized nop5 uprobe all five

_libc = ctypes.CDLL(None, use_errno=True)


def bpf_program_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds open (bcc keeps one descriptor per loaded function)."""
    found: set[int] = set()
    directory = Path(f"/proc/{pid}/fdinfo")
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            text = entry.read_text()
        except OSError:
            continue  # closed between listing and reading
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                found.add(int(line.split()[1]))
    return found


def bpf_program_exists(program_id: int) -> bool:
    attributes = (ctypes.c_uint32 * 4)(program_id, 0, 0, 0)
    descriptor = _libc.syscall(SYS_BPF, BPF_PROG_GET_FD_BY_ID, ctypes.byref(attributes), ctypes.sizeof(attributes))
    if descriptor >= 0:
        os.close(descriptor)
        return True
    error = ctypes.get_errno()
    if error != errno.ENOENT:
        raise OSError(error, f"bpf(BPF_PROG_GET_FD_BY_ID, {program_id}): {os.strerror(error)}")
    return False


def surviving_programs(program_ids: set[int], timeout: float = 10.0) -> set[int]:
    """The ids still loaded after ``timeout``: the kernel frees programs after an RCU grace period."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {program_id for program_id in program_ids if bpf_program_exists(program_id)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def tracefs_events_of(tracer_pid: int) -> list[str]:
    """uprobe/dynamic event lines bcc would have created for ``tracer_pid`` (named ..._bcc_<pid>) when it
    falls back from the uprobe PMU to tracefs."""
    lines = []
    for name in ("uprobe_events", "dynamic_events"):
        try:
            text = (TRACEFS / name).read_text()
        except OSError:
            continue
        lines += [line for line in text.splitlines() if f"bcc_{tracer_pid}" in line]
    return lines


def bpftool_perf_entries(tracer_pid: int) -> list[dict] | None:
    """`bpftool perf list` entries owned by ``tracer_pid``; None when bpftool is not installed."""
    bpftool = shutil.which("bpftool") or next((path for path in ("/usr/sbin/bpftool",) if os.path.exists(path)),
                                              None)
    if bpftool is None:
        return None
    result = subprocess.run([bpftool, "-j", "perf", "list"], capture_output=True, text=True, timeout=30,
                            check=False)
    entries = json.loads(result.stdout or "[]")
    return [entry for entry in entries if entry.get("pid") == tracer_pid]


@dataclass(frozen=True)
class ProbeSite:
    name: str
    runtime_address: int
    original: bytes  # the first SITE_BYTES bytes in the library file


def probe_sites(pid: int) -> list[ProbeSite]:
    """Every address arena-trace may probe in ``pid`` (both tiers, all allocators) with its file bytes."""
    from arena_trace.tracer.elf_file import open_elf
    from arena_trace.tracer.probe_plan import detect_allocators, plan_probes

    plan = plan_probes(pid, detect_allocators(pid), full=True)
    sites = []
    for probe in plan.probes:
        address = probe.probe_address
        if address is None or probe.allocator.load_bias is None:
            continue
        with open_elf(probe.allocator.host_path) as binary:
            original = binary.read_at_virtual_address(address, SITE_BYTES)
        sites.append(ProbeSite(probe.spec.name, probe.allocator.load_bias + address, original))
    return sites


def breakpoints_left(pid: int, sites: list[ProbeSite]) -> list[str]:
    """Names of the sites whose code in the live process differs from the file (a uprobe's int3)."""
    changed = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for site in sites:
            memory.seek(site.runtime_address)
            if memory.read(len(site.original)) != site.original:
                changed.append(site.name)
    return changed


def breakpoints_present(pid: int, sites: list[ProbeSite]) -> list[str]:
    """Names of the sites armed right now (proves that breakpoints_left can see a probe at all)."""
    return breakpoints_left(pid, sites)


def leftovers(tracer_pid: int, program_ids: set[int], target_pid: int | None,
              sites: list[ProbeSite]) -> dict[str, object]:
    """Everything of the tracer's that is still there; an empty dict means nothing."""
    found: dict[str, object] = {}
    alive = surviving_programs(program_ids)
    if alive:
        found["bpf programs still loaded"] = sorted(alive)
    events = tracefs_events_of(tracer_pid)
    if events:
        found["tracefs uprobe events"] = events
    perf = bpftool_perf_entries(tracer_pid)
    if perf:
        found["bpftool perf list"] = perf
    if target_pid is not None and os.path.exists(f"/proc/{target_pid}/mem"):
        changed = breakpoints_left(target_pid, sites)
        if changed:
            found["breakpoints in the target"] = changed
    return found
