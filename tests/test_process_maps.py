import os
from pathlib import Path

import pytest
from arena_trace.tracer.process_maps import (
    Mapping,
    NotAProcess,
    ProcessGone,
    check_traceable,
    find_libc,
    find_library,
    group_modules,
    modules,
    parse_maps,
    parse_status,
    read_cmdline,
    read_comm,
    read_maps,
    read_threads,
)

MAPS = """\
55d0c6a00000-55d0c6a01000 r--p 00000000 08:01 1234 /opt/app/bin/with space
55d0c6a01000-55d0c6a02000 r-xp 00001000 08:01 1234 /opt/app/bin/with space
7f1a2b000000-7f1a2b026000 r--p 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2b026000-7f1a2b17b000 r-xp 00026000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2b200000-7f1a2b201000 r-xp 00005000 08:01 77 /work/libnative_alloc.so (deleted)
7f1a2b300000-7f1a2b321000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
garbage line
"""


def test_parse_maps_keeps_spaces_and_skips_garbage() -> None:
    mappings = parse_maps(MAPS)
    assert len(mappings) == 7
    assert mappings[0] == Mapping(0x55D0C6A00000, 0x55D0C6A01000, "r--p", 0, "08:01", 1234,
                                  "/opt/app/bin/with space")
    assert not mappings[5].is_file_backed


def test_group_modules_load_base_and_host_path() -> None:
    grouped = {module.basename: module for module in group_modules(4242, parse_maps(MAPS))}
    libc = grouped["libc.so.6"]
    assert libc.load_base == 0x7F1A2B000000
    assert libc.host_path == "/proc/4242/root/usr/lib/x86_64-linux-gnu/libc.so.6"
    # Only the text segment of a deleted library is mapped: base falls back to start - offset.
    native = find_library(grouped.values(), r"^libnative_alloc\.so")
    assert native is not None and native.load_base == 0x7F1A2B200000 - 0x5000
    assert native.path == "/work/libnative_alloc.so"
    assert native.host_path == "/proc/4242/map_files/7f1a2b200000-7f1a2b201000"
    assert find_libc(grouped.values()) is libc
    assert find_library(grouped.values(), lambda name: name == "nothing") is None


def test_own_process() -> None:
    pid = os.getpid()
    assert read_maps(pid)
    libc = find_libc(modules(pid))
    assert libc is not None and os.path.exists(libc.host_path)
    assert read_comm(pid)
    assert read_cmdline(pid)
    assert pid in [thread.tid for thread in read_threads(pid)]
    assert check_traceable(pid).tgid == pid


def test_missing_process_raises_process_gone() -> None:
    with pytest.raises(ProcessGone):
        read_maps(2**22 + 12345)
    with pytest.raises(ProcessGone):
        read_threads(2**22 + 12345)


def test_status_detects_threads_and_kernel_threads() -> None:
    thread = parse_status(101, "Name:\tworker\nTgid:\t100\nPid:\t101\nVmSize:\t 100 kB\nKthread:\t0\n")
    assert thread.is_thread_of_other_process and not thread.is_kernel_thread
    kernel = parse_status(2, "Name:\tkthreadd\nTgid:\t2\nPid:\t2\n")
    assert kernel.is_kernel_thread
    if os.path.exists("/proc/2/status") and "kthreadd" in Path("/proc/2/status").read_text():
        with pytest.raises(NotAProcess):
            check_traceable(2)


def test_target_strings_are_plain_data() -> None:
    status = parse_status(5, "Name:\t__import__('os').system('x')\nTgid:\t5\nVmSize:\t1 kB\n")
    assert status.name == "__import__('os').system('x')"
