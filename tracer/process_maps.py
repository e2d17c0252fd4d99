"""Read what the kernel exposes about a target process under /proc.

Everything read here is controlled by the traced program (its paths, thread names, command line), so it
is kept as plain data: decoded with errors="replace", never evaluated, never used to build shell commands.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROC_ROOT = Path("/proc")

# Paths the kernel gives to mappings that are not backed by a file.
_PSEUDO_PATH_PREFIXES = ("[", "anon_inode:", "/memfd:", "/SYSV")
_DELETED_SUFFIX = " (deleted)"

LIBC_PATTERN = re.compile(r"^libc(\.so\.6|-2\.\d+\.so)$")


class ProcessGone(Exception):
    """The process (or thread) does not exist, or exited while we were reading it."""


class NotAProcess(Exception):
    """The id names something we cannot trace the way the caller asked (a thread, a kernel thread)."""


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    permissions: str
    offset: int
    device: str
    inode: int
    path: str

    @property
    def is_file_backed(self) -> bool:
        return self.inode != 0 and bool(self.path) and not self.path.startswith(_PSEUDO_PATH_PREFIXES)

    @property
    def is_executable(self) -> bool:
        return "x" in self.permissions

    @property
    def is_deleted(self) -> bool:
        return self.path.endswith(_DELETED_SUFFIX)


@dataclass(frozen=True)
class Module:
    """One file mapped into the process, with every mapping of it."""

    path: str  # as the target sees it (inside its mount namespace)
    host_path: str  # openable from the tracer: through /proc/PID/root
    load_base: int  # runtime address = load_base + ELF virtual address (for ET_DYN)
    mappings: tuple[Mapping, ...] = field(repr=False)

    @property
    def basename(self) -> str:
        return os.path.basename(self.path)

    @property
    def start(self) -> int:
        return min(mapping.start for mapping in self.mappings)

    @property
    def end(self) -> int:
        return max(mapping.end for mapping in self.mappings)

    def contains(self, address: int) -> bool:
        return any(mapping.start <= address < mapping.end for mapping in self.mappings)


@dataclass(frozen=True)
class ThreadInfo:
    tid: int
    name: str


@dataclass(frozen=True)
class ProcessStatus:
    pid: int
    tgid: int
    name: str
    is_kernel_thread: bool

    @property
    def is_thread_of_other_process(self) -> bool:
        return self.pid != self.tgid


def _proc_path(pid: int, *parts: str) -> Path:
    if pid <= 0:
        raise ValueError(f"invalid pid {pid}")
    return PROC_ROOT.joinpath(str(pid), *parts)


def _read_bytes(pid: int, *parts: str) -> bytes:
    path = _proc_path(pid, *parts)
    try:
        return path.read_bytes()
    except (FileNotFoundError, ProcessLookupError) as error:
        raise ProcessGone(f"process {pid} does not exist (reading {path})") from error
    except OSError as error:
        # ESRCH shows up when the process exits between open() and read().
        if error.errno == 3:
            raise ProcessGone(f"process {pid} exited while reading {path}") from error
        raise


def _read_text(pid: int, *parts: str) -> str:
    return _read_bytes(pid, *parts).decode("utf-8", errors="replace")


def parse_maps_line(line: str) -> Mapping | None:
    """Parse one /proc/PID/maps line; the path may contain spaces, so split a fixed number of fields."""
    fields = line.rstrip("\n").split(None, 5)
    if len(fields) < 5:
        return None
    address_range, permissions, offset, device, inode = fields[:5]
    path = fields[5] if len(fields) == 6 else ""
    start_text, _, end_text = address_range.partition("-")
    try:
        return Mapping(
            start=int(start_text, 16),
            end=int(end_text, 16),
            permissions=permissions,
            offset=int(offset, 16),
            device=device,
            inode=int(inode),
            path=path.strip(),
        )
    except ValueError:
        return None


def parse_maps(text: str) -> list[Mapping]:
    return [mapping for mapping in map(parse_maps_line, text.splitlines()) if mapping is not None]


def read_maps(pid: int) -> list[Mapping]:
    return parse_maps(_read_text(pid, "maps"))


def host_path_for(pid: int, target_path: str) -> str:
    """Make a path seen by the target openable from here, across mount namespaces (containers)."""
    if target_path.endswith(_DELETED_SUFFIX):
        target_path = target_path[: -len(_DELETED_SUFFIX)]
    return str(_proc_path(pid, "root")) + target_path


def _load_base(mappings: Iterable[Mapping]) -> int:
    ordered = sorted(mappings, key=lambda mapping: mapping.start)
    for mapping in ordered:
        if mapping.offset == 0:
            return mapping.start
    # No offset-0 mapping (e.g. only the text segment is still mapped): fall back to start - offset,
    # which holds when the kernel mapped the file with p_offset/p_vaddr congruent, as it always does.
    return ordered[0].start - ordered[0].offset


def _module_host_path(pid: int, path: str, group: Sequence[Mapping]) -> str:
    if path.endswith(_DELETED_SUFFIX):
        # The file was replaced or removed (e.g. a package upgrade under a running process); its
        # contents stay reachable through map_files, which needs root, as tracing does anyway.
        first = min(group, key=lambda mapping: (mapping.offset, mapping.start))
        return str(_proc_path(pid, "map_files", f"{first.start:x}-{first.end:x}"))
    return host_path_for(pid, path)


def group_modules(pid: int, mappings: Iterable[Mapping]) -> list[Module]:
    by_path: dict[str, list[Mapping]] = {}
    for mapping in mappings:
        if mapping.is_file_backed:
            by_path.setdefault(mapping.path, []).append(mapping)
    return [
        Module(
            path=path.removesuffix(_DELETED_SUFFIX),
            host_path=_module_host_path(pid, path, group),
            load_base=_load_base(group),
            mappings=tuple(sorted(group, key=lambda mapping: mapping.start)),
        )
        for path, group in by_path.items()
    ]


def modules(pid: int) -> list[Module]:
    return group_modules(pid, read_maps(pid))


def find_library(candidates: Iterable[Module], predicate: Callable[[str], bool] | re.Pattern[str] | str
                 ) -> Module | None:
    """First module whose basename matches; a str is taken as a regular expression on the basename."""
    if isinstance(predicate, str):
        predicate = re.compile(predicate)
    if isinstance(predicate, re.Pattern):
        pattern = predicate
        predicate = lambda basename: pattern.search(basename) is not None  # noqa: E731
    for module in candidates:
        if predicate(module.basename):
            return module
    return None


def find_libc(candidates: Iterable[Module]) -> Module | None:
    return find_library(candidates, LIBC_PATTERN)


def read_comm(pid: int) -> str:
    return _read_text(pid, "comm").rstrip("\n")


def read_cmdline(pid: int) -> list[str]:
    raw = _read_bytes(pid, "cmdline")
    return [argument.decode("utf-8", errors="replace") for argument in raw.split(b"\0") if argument]


def read_threads(pid: int) -> list[ThreadInfo]:
    task_directory = _proc_path(pid, "task")
    try:
        tids = sorted(int(entry) for entry in os.listdir(task_directory) if entry.isdigit())
    except FileNotFoundError as error:
        raise ProcessGone(f"process {pid} does not exist") from error
    threads = []
    for tid in tids:
        try:
            name = (task_directory / str(tid) / "comm").read_bytes().decode("utf-8", errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited between listing and reading; that is normal
        threads.append(ThreadInfo(tid=tid, name=name.rstrip("\n")))
    return threads


def parse_status(pid: int, text: str) -> ProcessStatus:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    tgid = int(fields.get("Tgid", pid))
    # Newer kernels say so in "Kthread"; older ones only show it by the missing VmSize (no user memory).
    is_kernel_thread = fields["Kthread"] == "1" if "Kthread" in fields else "VmSize" not in fields
    return ProcessStatus(pid=pid, tgid=tgid, name=fields.get("Name", ""), is_kernel_thread=is_kernel_thread)


def read_status(pid: int) -> ProcessStatus:
    return parse_status(pid, _read_text(pid, "status"))


def check_traceable(pid: int) -> ProcessStatus:
    """Refuse ids the tracer cannot attach uprobes for, with a message that says what to pass instead."""
    status = read_status(pid)
    if status.is_kernel_thread:
        raise NotAProcess(f"{pid} ({status.name}) is a kernel thread: it runs no user code to probe")
    if status.is_thread_of_other_process:
        raise NotAProcess(f"{pid} is a thread of process {status.tgid}; pass the process id {status.tgid}")
    return status
