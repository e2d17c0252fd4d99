"""`arena-trace doctor`: exit 0 here (CI has everything), and each check names its fix when its piece is
missing — simulated with empty directories standing in for tracefs, the headers link, the debug files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from arena_trace.tracer import environment


def test_doctor_passes_on_this_machine() -> None:
    result = subprocess.run([sys.executable, "-m", "arena_trace", "doctor"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracing will work" in result.stdout
    assert "FAIL" not in result.stdout


def test_every_real_check_passes() -> None:
    failed = [check for check in environment.run_checks() if not check.ok]
    assert failed == []


def test_missing_tracefs_names_the_mount_command(tmp_path: Path) -> None:
    check = environment.check_tracefs(tmp_path / "tracing")
    assert not check.ok
    assert check.fix == f"mount -t tracefs tracefs {tmp_path / 'tracing'}"


def test_tracefs_without_syscall_events(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    check = environment.check_tracefs(tmp_path)
    assert not check.ok and "FTRACE_SYSCALLS" in check.fix


def test_missing_headers_names_the_package_and_setup(tmp_path: Path) -> None:
    check = environment.check_headers(tmp_path)
    assert not check.ok
    assert "linux-headers-amd64" in check.fix and "scripts/setup" in check.fix


def test_missing_uprobe_pmu(tmp_path: Path) -> None:
    check = environment.check_uprobe_events(tmp_path)
    assert not check.ok and "CONFIG_UPROBES" in check.fix


def test_missing_libc_debug_file_names_libc6_dbg(tmp_path: Path) -> None:
    check = environment.check_libc_debug(debug_root=tmp_path)
    assert not check.ok
    assert check.fix == "apt-get install libc6-dbg"


def test_unprivileged_user_is_told_to_use_sudo() -> None:
    status = "Name:\tx\nCapEff:\t0000000000000000\n"
    check = environment.check_privileges(euid=1000, status_text=status)
    assert not check.ok and "sudo" in check.fix
    capabilities = (1 << environment.CAP_BPF) | (1 << environment.CAP_PERFMON)
    assert environment.check_privileges(euid=1000, status_text=f"CapEff:\t{capabilities:016x}\n").ok


def test_doctor_exit_code_when_a_check_fails(monkeypatch, capsys) -> None:
    from arena_trace.cli import main

    failing = environment.Check("kernel headers", False, "missing", "apt-get install linux-headers-amd64")
    monkeypatch.setattr(environment, "run_checks", lambda: [failing])
    assert main(["doctor"]) == 4
    output = capsys.readouterr().out
    assert "FAIL" in output and "fix: apt-get install linux-headers-amd64" in output
