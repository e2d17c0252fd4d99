"""Bad input, one test per case: every one gets one line naming the problem, the documented exit code
(docs/guarantees.md), no traceback, and no output file when arena-trace fails before recording.

Trace-file damage the library reader already covers (tests/test_trace_reader.py) is exercised here only
through the CLI (exit codes, one line) and for what that file lacks: FIFOs, huge declared sizes
checked against the reader's memory, truncation at every section boundary.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from arena_trace.tracer.elf_file import open_elf
from arena_trace.tracer.trace_format import HEADER, SECTION_HEADER, Encoding, SectionKind, encode_header, encode_section
from helpers.targets import (
    WORKLOAD,
    arena_trace_command,
    compile_helper,
    start_workload,
    stop_quietly,
    wait_for_libraries,
)
from synthetic import make_trace, write_trace_file
from tracing import build_native

from arena_trace.errors import ExitCode

CLI_TIMEOUT = 180


@dataclass
class Case:
    arguments: list[str]  # placeholders: {target} {thread} {tmp} {trace} {static}
    exit_code: int
    message: str  # must appear in the one stderr line
    no_file: str | None = None  # a path (with placeholders) that must not exist afterwards


CASES: dict[str, Case] = {
    # command line
    "unknown-option-alone": Case(["--bogus"], ExitCode.USAGE, "unrecognized arguments: --bogus"),
    "unknown-option": Case(["-p", "{target}", "--bogus"], ExitCode.USAGE, "unrecognized arguments: --bogus"),
    "unknown-option-run": Case(["run", "--bogus", "--", "true"], ExitCode.USAGE, "unrecognized arguments"),
    "missing-pid": Case(["record"], ExitCode.USAGE, "-p/--pid"),
    "pid-without-value": Case(["-p"], ExitCode.USAGE, "expected one argument"),
    "pid-text": Case(["-p", "abc"], ExitCode.USAGE, "invalid PID 'abc'"),
    "pid-negative": Case(["-p", "-1"], ExitCode.USAGE, "invalid PID -1"),
    "pid-zero": Case(["-p", "0"], ExitCode.USAGE, "invalid PID 0"),
    "pid-fraction": Case(["-p", "1.5"], ExitCode.USAGE, "invalid PID '1.5'"),
    "pid-huge": Case(["-p", "99999999999999999999"], ExitCode.TARGET, "no process with PID"),
    "pid-absent": Case(["-p", "4194304"], ExitCode.TARGET, "no process with PID 4194304"),
    "pid-kernel-thread": Case(["-p", "2"], ExitCode.TARGET, "kernel thread"),
    "pid-is-a-thread": Case(["-p", "{thread}"], ExitCode.TARGET, "is a thread of process {target}"),
    "duration-zero": Case(["-p", "{target}", "-d", "0"], ExitCode.USAGE, "positive number of seconds"),
    "duration-negative": Case(["-p", "{target}", "-d", "-5"], ExitCode.USAGE, "positive number of seconds"),
    "duration-nan": Case(["-p", "{target}", "-d", "nan"], ExitCode.USAGE, "positive number of seconds"),
    "duration-inf": Case(["-p", "{target}", "-d", "inf"], ExitCode.USAGE, "positive number of seconds"),
    "duration-text": Case(["-p", "{target}", "-d", "soon"], ExitCode.USAGE, "invalid duration 'soon'"),
    "top-zero": Case(["-p", "{target}", "--top", "0"], ExitCode.USAGE, "--top must be at least 1"),
    "allocator-unknown": Case(["-p", "{target}", "--allocator", "jemalloc"], ExitCode.USAGE, "invalid choice"),
    # output paths: refused before attaching, so nothing is created or overwritten
    "output-unwritable-directory": Case(["-p", "{target}", "-o", "/proc/1/x.atrace"], ExitCode.OUTPUT,
                                        "is not writable", no_file="/proc/1/x.atrace"),
    "output-missing-directory": Case(["-p", "{target}", "-o", "{tmp}/missing/x.atrace"], ExitCode.OUTPUT,
                                     "does not exist", no_file="{tmp}/missing"),
    "output-exists-without-force": Case(["-p", "{target}", "-o", "{trace}"], ExitCode.OUTPUT,
                                        "already exists (use --force"),
    "output-is-a-directory": Case(["-p", "{target}", "-o", "{tmp}", "--force"], ExitCode.OUTPUT, "is a directory"),
    "json-unwritable": Case(["-p", "{target}", "--json", "/proc/1/x.json", "-o", "{tmp}/new.atrace"],
                            ExitCode.OUTPUT, "is not writable", no_file="{tmp}/new.atrace"),
    "json-missing-directory": Case(["-p", "{target}", "--json", "{tmp}/missing/x.json", "-o", "{tmp}/new.atrace"],
                                   ExitCode.OUTPUT, "does not exist", no_file="{tmp}/new.atrace"),
    "json-exists-without-force": Case(["-p", "{target}", "--json", "{trace}"], ExitCode.OUTPUT, "already exists"),
    # run mode
    "run-without-command": Case(["run"], ExitCode.USAGE, "no command given"),
    "run-dashes-only": Case(["run", "--"], ExitCode.USAGE, "no command given"),
    "run-missing-command": Case(["run", "-o", "{tmp}/new.atrace", "--", "/nonexistent/command"], ExitCode.TARGET,
                                "command not found", no_file="{tmp}/new.atrace"),
    "run-not-an-executable": Case(["run", "--", "{tmp}/not-executable"], ExitCode.TARGET, "command not found"),
    # targets
    "target-without-allocator": Case(["-p", "{static}", "-o", "{tmp}/new.atrace"], ExitCode.TARGET,
                                     "no supported allocator", no_file="{tmp}/new.atrace"),
    "target-without-requested-allocator": Case(["-p", "{static}", "--allocator", "native"], ExitCode.TARGET,
                                               "native not found"),
    "run-static-command": Case(["run", "--", "{static_path}"], ExitCode.TARGET, "no supported allocator"),
    # trace files
    "analyze-missing-file": Case(["analyze", "{tmp}/absent.atrace"], ExitCode.BAD_TRACE, "No such file"),
    "analyze-directory": Case(["analyze", "{tmp}"], ExitCode.BAD_TRACE, "is a directory"),
    "analyze-fifo": Case(["analyze", "{fifo}"], ExitCode.BAD_TRACE, "not a regular file"),
    "analyze-device": Case(["analyze", "/dev/zero"], ExitCode.BAD_TRACE, "not a regular file"),
    "analyze-empty": Case(["analyze", "{empty}"], ExitCode.BAD_TRACE, "empty file"),
    "analyze-not-a-trace": Case(["analyze", str(WORKLOAD)], ExitCode.BAD_TRACE, "not an arena-trace file"),
    "analyze-future-version": Case(["analyze", "{future}"], ExitCode.BAD_TRACE, "unsupported trace format version"),
    "analyze-no-metadata": Case(["analyze", "{header_only}"], ExitCode.BAD_TRACE, "no METADATA"),
    "analyze-unreadable-export": Case(["analyze", "{trace}", "--csv", "{tmp}/missing/x.csv"], ExitCode.OUTPUT,
                                      "does not exist"),
    "analyze-bad-window": Case(["analyze", "{trace}", "--since", "2", "--until", "1"], ExitCode.USAGE,
                               "--since must be before --until"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Processes and files the cases refer to; everything is cleaned up after the module."""
    build_native()
    tmp = tmp_path_factory.mktemp("bad-input")
    target = start_workload(["--scenario", "contention", "--threads", "2", "--iterations", "10"], wait_signal=True)
    static = compile_helper("no_allocator.c", tmp / "no-allocator", "-static", "-nostdlib")
    static_process = subprocess.Popen([str(static)])
    threaded = subprocess.Popen([str(WORKLOAD), "--scenario", "contention", "--threads", "2", "--duration", "600"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_libraries(threaded.pid)
    deadline = time.monotonic() + 10
    threads: list[str] = []
    while time.monotonic() < deadline and len(threads) < 2:
        threads = [tid for tid in os.listdir(f"/proc/{threaded.pid}/task") if tid != str(threaded.pid)]
        time.sleep(0.05)
    trace = write_trace_file(make_trace(seed=1, threads=2), tmp / "existing.atrace", batch_rows=100)
    (tmp / "not-executable").write_text("#!/bin/sh\n")
    (tmp / "empty.atrace").write_bytes(b"")
    (tmp / "future.atrace").write_bytes(struct.pack("<8sHHI", b"ARENATRC", 99, 0, 0))
    (tmp / "header-only.atrace").write_bytes(encode_header())
    fifo = tmp / "trace.fifo"
    os.mkfifo(fifo)
    values = {"target": str(target.pid), "thread": threads[0], "tmp": str(tmp), "trace": str(trace),
              "static": str(static_process.pid), "static_path": str(static), "fifo": str(fifo),
              "empty": str(tmp / "empty.atrace"), "future": str(tmp / "future.atrace"),
              "header_only": str(tmp / "header-only.atrace"), "threaded": str(threaded.pid)}
    values["thread_target"] = str(threaded.pid)
    yield values
    for process in (target, static_process, threaded):
        process.kill()
        process.communicate(timeout=30)


def run_cli(arguments: list[str], environment: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(arena_trace_command(*arguments), capture_output=True, text=True, timeout=timeout,
                          env=environment)


def assert_one_line_failure(result: subprocess.CompletedProcess, exit_code: int, message: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("arena-trace: "), lines
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(world: dict[str, str], name: str) -> None:
    case = CASES[name]
    values = dict(world)
    if name == "pid-is-a-thread":
        values["target"] = world["thread_target"]
    arguments = [argument.format(**values) for argument in case.arguments]
    existing = Path(world["trace"]).read_bytes()
    result = run_cli(arguments)
    assert_one_line_failure(result, case.exit_code, case.message.format(**values))
    if case.no_file:
        assert not Path(case.no_file.format(**values)).exists()
    assert Path(world["trace"]).read_bytes() == existing, "an existing file was touched"


# --- cases that need more than a command line ----------------------------------------------------------

def test_pid_1_of_another_pid_namespace(tmp_path: Path) -> None:
    """The init of a container-like PID namespace, given by its host PID, is traced like any process."""
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", str(WORKLOAD), "--scenario",
                               "growth", "--threads", "1", "--duration", "30"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        inner = None
        while time.monotonic() < deadline and inner is None:
            children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()
            inner = int(children[0]) if children else None
            time.sleep(0.05)
        if inner is None:
            pytest.skip("unshare --pid --fork did not start a child here (no PID namespace support)")
        namespace_pids = next(line.split()[1:] for line in Path(f"/proc/{inner}/status").read_text().splitlines()
                              if line.startswith("NSpid:"))
        assert namespace_pids[-1] == "1", f"not PID 1 of its namespace: {namespace_pids}"
        wait_for_libraries(inner)
        result = run_cli(["-p", str(inner), "-d", "1", "--json", str(tmp_path / "s.json")])
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr
        # Its own view of itself is PID 1; asking for "1" means the host's init, a different process.
        assert (tmp_path / "s.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)


def test_trace_file_truncated_at_every_section_boundary_through_the_cli(tmp_path: Path) -> None:
    full = write_trace_file(make_trace(seed=2, threads=2), tmp_path / "full.atrace", batch_rows=400)
    data = full.read_bytes()
    boundaries, position = [], HEADER.size
    while position < len(data):
        position += SECTION_HEADER.size + SECTION_HEADER.unpack_from(data, position)[4]
        boundaries.append(position)
    cut_path = tmp_path / "cut.atrace"
    for cut in [HEADER.size + 3, *boundaries[:-1]]:
        cut_path.write_bytes(data[:cut])
        from arena_trace.cli import main

        result = subprocess.CompletedProcess([], 0, "", "")
        import contextlib
        import io

        errors = io.StringIO()
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            result.returncode = main(["analyze", str(cut_path)])
        result.stderr = errors.getvalue()
        if cut < boundaries[0]:
            assert_one_line_failure(result, ExitCode.BAD_TRACE, "no METADATA")
        else:
            assert_one_line_failure(result, ExitCode.PARTIAL, "no footer")


def test_huge_declared_section_is_not_allocated(tmp_path: Path) -> None:
    """A section header declaring 1 GiB (just under the reader's limit) in a small file: the reader must
    compare it with the file size first, not allocate it. The child's peak RSS proves it."""
    full = write_trace_file(make_trace(seed=2, threads=2), tmp_path / "full.atrace", batch_rows=400)
    data = full.read_bytes()
    metadata_end = HEADER.size + SECTION_HEADER.size + SECTION_HEADER.unpack_from(data, HEADER.size)[4]
    from arena_trace.tracer.trace_format import MAX_SECTION_BYTES

    huge = SECTION_HEADER.pack(b"SECT", SectionKind.EVENTS, Encoding.ARROW_IPC, 0, MAX_SECTION_BYTES, 0)
    path = tmp_path / "huge.atrace"
    path.write_bytes(data[:metadata_end] + huge + b"\0" * 4096)
    process = subprocess.Popen(arena_trace_command("analyze", str(path)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    assert "Traceback" not in stderr
    assert process.returncode == ExitCode.PARTIAL, stderr
    assert "file cut at byte" in stderr
    peak_bytes = usage.ru_maxrss * 1024
    assert peak_bytes < MAX_SECTION_BYTES // 3, f"peak RSS {peak_bytes >> 20} MiB: the declared size was allocated"


def test_garbage_section_after_metadata_is_one_line(tmp_path: Path) -> None:
    full = write_trace_file(make_trace(seed=2, threads=2), tmp_path / "full.atrace", batch_rows=400)
    data = full.read_bytes()
    metadata_end = HEADER.size + SECTION_HEADER.size + SECTION_HEADER.unpack_from(data, HEADER.size)[4]
    path = tmp_path / "garbage.atrace"
    path.write_bytes(data[:metadata_end] + encode_section(SectionKind.EVENTS, Encoding.ARROW_IPC, os.urandom(256)))
    assert_one_line_failure(run_cli(["analyze", str(path)]), ExitCode.BAD_TRACE, "bad Arrow data")


def _copy_workload(directory: Path) -> Path:
    """arena-workload and its native_alloc library in ``directory`` (it finds the library via $ORIGIN)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("arena-workload", "libnative_alloc.so"):
        shutil.copy2(WORKLOAD.parent / name, directory / name)
    return directory / "arena-workload"


def test_allocator_library_deleted_after_start(tmp_path: Path) -> None:
    """The library file is gone (a package upgrade under a running process): traced through map_files."""
    workload = _copy_workload(tmp_path / "copy")
    process = subprocess.Popen([str(workload), "--allocator", "native", "--scenario", "contention", "--threads", "2",
                                "--duration", "30"], stdout=subprocess.DEVNULL)
    try:
        wait_for_libraries(process.pid)
        (tmp_path / "copy" / "libnative_alloc.so").unlink()
        result = run_cli(["-p", str(process.pid), "-d", "1", "--allocator", "native", "--json",
                          str(tmp_path / "s.json")])
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr
        assert "failed" not in result.stderr.split("attached")[1].split("\n")[0], result.stderr
    finally:
        stop_quietly(process)


def test_corrupted_eh_frame_in_the_target_library(tmp_path: Path) -> None:
    """Unwind tables of the target are garbage: stacks end early and are counted, nothing crashes."""
    workload = _copy_workload(tmp_path / "copy")
    library = tmp_path / "copy" / "libnative_alloc.so"
    with open_elf(library) as binary:
        section = binary._sections[".eh_frame"]  # noqa: SLF001 - test reaches for the file offset
        offset, size = section["sh_offset"], section["sh_size"]
    data = bytearray(library.read_bytes())
    data[offset:offset + size] = bytes((index * 37 + 11) & 0xFF for index in range(size))
    library.write_bytes(bytes(data))
    result = run_cli(["run", "--allocator", "native", "--json", str(tmp_path / "s.json"), "--", str(workload),
                      "--allocator", "native", "--scenario", "contention", "--threads", "4", "--iterations", "20000"])
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "s.json").read_text())
    # na_grow runs at least once and its stack starts in the damaged library: it cannot be complete.
    assert summary["completeness"]["stacks_truncated"] > 0, summary["completeness"]


def test_missing_debug_symbols_fall_back_to_exported_functions(tmp_path: Path) -> None:
    """A libc whose debug file cannot be found (its build-id changed): a warning naming the package to
    install, exit 0, exported functions and syscall tracepoints still traced."""
    libc = next(Path(line.split()[-1]) for line in Path("/proc/self/maps").read_text().splitlines()
                if line.split()[-1].endswith("/libc.so.6"))
    copy_directory = tmp_path / "libc"
    copy_directory.mkdir()
    copy = copy_directory / "libc.so.6"
    shutil.copy2(libc, copy)
    with open_elf(copy) as binary:
        build_id = binary.build_id
    data = copy.read_bytes()
    identity = bytes.fromhex(build_id)
    assert data.count(identity) >= 1
    copy.write_bytes(data.replace(identity, bytes(byte ^ 0xFF for byte in identity), 1))
    environment = dict(os.environ, LD_LIBRARY_PATH=str(copy_directory), MALLOC_ARENA_MAX="1")
    process = subprocess.Popen([str(WORKLOAD), "--scenario", "contention", "--threads", "4", "--duration", "30"],
                               stdout=subprocess.DEVNULL, env=environment)
    try:
        wait_for_libraries(process.pid)
        assert str(copy) in Path(f"/proc/{process.pid}/maps").read_text()
        result = run_cli(["-p", str(process.pid), "-d", "2", "--allocator", "glibc", "--debug-dir",
                          str(tmp_path / "nowhere"), "--json", str(tmp_path / "s.json")])
    finally:
        stop_quietly(process)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert "apt-get install libc6-dbg" in result.stderr
    import json

    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["syscalls"]["futex"]["calls"] > 0
    assert summary["completeness"]["probes_attached"] > 0


@pytest.mark.parametrize("command", ["record", "run"])
def test_no_permission(world: dict[str, str], command: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    output = tmp_path / "x.atrace"
    arguments = ["-p", world["target"]] if command == "record" else ["run", "--", "/bin/true"]
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             *arena_trace_command(*arguments, "-o", str(output))],
                            capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd="/")
    assert_one_line_failure(result, ExitCode.ENVIRONMENT, "rerun with sudo")
    assert not output.exists()


@pytest.mark.parametrize("kind", ["missing", "fifo", "directory"])
def test_view_refuses_unreadable_inputs_like_analyze(tmp_path: Path, kind: str) -> None:
    """`view` and `analyze` share one way to open an input: exit 3, one line, never blocking on a FIFO."""
    target = tmp_path / "input"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    for command in ("view", "analyze"):
        result = subprocess.run([sys.executable, "-m", "arena_trace", command, str(target)], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 3, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
