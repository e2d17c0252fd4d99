"""Start a command paused before its first instruction, so probes are attached before it runs.

The command is started as ``/bin/sh -c 'read <&FD || exit; exec "$@"'``: the pid is the command's pid
from the start (exec keeps it), it inherits stdin/stdout/stderr untouched, and if the tracer dies or gives
up before releasing it, the shell sees end-of-file and exits instead of running the command untraced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from arena_trace.tracer.elf_file import ElfError, open_elf

from arena_trace.errors import TargetError

NOT_RELEASED_EXIT = 125
_LIST_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)\s*$")


@dataclass
class PausedCommand:
    process: subprocess.Popen
    _release_descriptor: int | None

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
        self.process.wait()

    def exit_status(self) -> int | None:
        return self.process.poll()


def find_executable(command: list[str]) -> str:
    if not command:
        raise TargetError("no command given: use arena-trace run [options] -- COMMAND [ARGS...]")
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
    return PausedCommand(process, write_descriptor)
