"""Start a command paused before its first instruction, so probes are attached before it runs.

The command is started as ``/bin/sh -c 'read <&FD || exit; exec "$@"'``: the pid is the command's pid
from the start (exec keeps it), it inherits stdin/stdout/stderr untouched, and if the tracer dies or gives
up before releasing it, the shell sees end-of-file and exits instead of running the command untraced.

A short command can exit before its memory map was ever read, and then its stacks cannot be symbolized.
So its main thread is ptrace-seized with only PTRACE_O_TRACEEXIT: the kernel stops it once at exit, with
its address space intact, we read the maps and let it go. Signals it receives are passed on unchanged, and
if arena-trace dies the kernel detaches ptrace and the command runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from arena_trace.tracer.elf_file import ElfError, open_elf

from arena_trace.errors import TargetError, UsageError

NOT_RELEASED_EXIT = 125
_LIST_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)\s*$")


PTRACE_CONT, PTRACE_SEIZE, PTRACE_LISTEN = 7, 0x4206, 0x4208
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_EXIT, PTRACE_EVENT_STOP = 6, 128
_WALL = 0x40000000


class ExitHolder:
    """Owns the child's waitpid: relays signals, runs ``on_exit`` at the exit stop, keeps the exit status.

    ptrace requests must come from the thread that seized the tracee, so everything runs in one thread.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.on_exit: Callable[[], None] | None = None
        self.status: int | None = None
        self.seized = threading.Event()
        self.done = threading.Event()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        self._thread = threading.Thread(target=self._run, name="arena-trace-exit-holder", daemon=True)
        self._thread.start()
        self.seized.wait(5)

    def _ptrace(self, request: int, data: int = 0) -> int:
        return self._libc.ptrace(request, self.pid, None, ctypes.c_void_p(data))

    def _run(self) -> None:
        self._ptrace(PTRACE_SEIZE, PTRACE_O_TRACEEXIT)  # if this fails we simply never see the exit stop
        self.seized.set()
        while True:
            try:
                _, status = os.waitpid(self.pid, _WALL)
            except ChildProcessError:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.status = os.waitstatus_to_exitcode(status)
                break
            if not os.WIFSTOPPED(status):
                continue
            event = status >> 16
            if event == PTRACE_EVENT_EXIT:
                if self.on_exit is not None:
                    with contextlib.suppress(Exception):
                        self.on_exit()
                self._ptrace(PTRACE_CONT)
            elif event == PTRACE_EVENT_STOP:
                self._ptrace(PTRACE_LISTEN)  # a group stop (SIGSTOP...): keep the job-control semantics
            else:
                self._ptrace(PTRACE_CONT, os.WSTOPSIG(status))  # pass the signal on
        self.done.set()


@dataclass
class PausedCommand:
    process: subprocess.Popen
    _release_descriptor: int | None
    holder: ExitHolder

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        if self._release_descriptor is not None:
            os.write(self._release_descriptor, b"go\n")
            os.close(self._release_descriptor)
            self._release_descriptor = None

    def abandon(self) -> None:
        """Do not run the command: the paused shell exits on end-of-file."""
        if self._release_descriptor is not None:
            os.close(self._release_descriptor)
            self._release_descriptor = None
        self.wait()

    def exit_status(self) -> int | None:
        return self.holder.status

    def wait(self) -> int:
        self.holder.done.wait()
        # The holder reaped the child; tell Popen so it never waits on a reused pid.
        self.process.returncode = self.holder.status
        return self.holder.status if self.holder.status is not None else 0


def find_executable(command: list[str]) -> str:
    if not command:
        # A command line problem (exit 2), not a target that cannot be traced (exit 5).
        raise UsageError("no command given: use arena-trace run [options] -- COMMAND [ARGS...]")
    found = shutil.which(command[0])
    if found is None:
        raise TargetError(f"command not found: {command[0]}")
    return os.path.realpath(found)


def _script_interpreter(path: str) -> str | None:
    with open(path, "rb") as script:
        first = script.readline(512)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0]


def libraries_of(executable: str) -> list[str]:
    """Shared libraries the dynamic loader will map for ``executable`` (its interpreter's, for a script)."""
    interpreter = _script_interpreter(executable)
    if interpreter:
        executable = os.path.realpath(interpreter)
    try:
        with open_elf(executable) as binary:
            loader = next((segment.get_interp_name() for segment in binary.pyelftools.iter_segments()
                           if segment["p_type"] == "PT_INTERP"), None)
    except ElfError as error:
        raise TargetError(f"cannot read {executable}: {error}") from None
    if loader is None:
        return []  # statically linked: no shared allocator library
    listing = subprocess.run([loader, "--list", executable], capture_output=True, text=True, timeout=30,
                             check=False)
    libraries = []
    for line in listing.stdout.splitlines():
        match = _LIST_LINE.match(line)
        if match:
            libraries.append(os.path.realpath(match.group(1)))
    return libraries


def start_paused(command: list[str]) -> PausedCommand:
    read_descriptor, write_descriptor = os.pipe()
    script = f'read _ <&{read_descriptor} || exit {NOT_RELEASED_EXIT}; exec {read_descriptor}<&-; exec "$@"'
    try:
        process = subprocess.Popen(["/bin/sh", "-c", script, "arena-trace-run", *command],
                                   pass_fds=(read_descriptor,))
    finally:
        os.close(read_descriptor)
    return PausedCommand(process, write_descriptor, ExitHolder(process.pid))
