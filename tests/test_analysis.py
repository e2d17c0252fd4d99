"""Aggregates against hand-computed numbers, findings, the JSON document, escaping and CLI exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from arena_trace.analysis import growth, locks  # noqa: E402
from arena_trace.analysis.aggregate import Analysis, AnalysisOptions  # noqa: E402
from arena_trace.analysis.findings import find  # noqa: E402
from arena_trace.analysis.percentiles import grouped_percentiles, histogram_percentile  # noqa: E402
from arena_trace.analysis.report import render_report  # noqa: E402
from arena_trace.analysis.summary import build_summary  # noqa: E402
from arena_trace.analysis.trace_reader import compact_events  # noqa: E402
from arena_trace.probes.event_layout import EVENT_FLAG_ARENA_LOCK, EVENT_FLAG_MAIN_ARENA  # noqa: E402
from synthetic import MAIN_ARENA, OTHER_ARENA, TraceBuilder, call, make_trace, write_trace_file  # noqa: E402

from arena_trace.cli import main  # noqa: E402

ARENA_FLAGS = EVENT_FLAG_ARENA_LOCK | EVENT_FLAG_MAIN_ARENA


def hand_trace():
    """Three sysmalloc calls (10, 20, 30 µs) under malloc → _int_malloc, each with one brk; two main_arena
    waits (4 and 6 µs) with a futex inside; one stdio lock wait (not an arena)."""
    builder = TraceBuilder()
    builder.thread(7, "alpha")
    builder.thread(8, "beta")
    brk = 0x1000_0000
    for index, duration in enumerate((10_000, 20_000, 30_000)):
        start = 1_000_000 * (index + 1)
        brk += 0x21000
        grow = call("sysmalloc", start + 100, duration,
                    call("brk", start + 200, duration // 2, argument0=brk, return_value=brk),
                    argument0=0x21000, argument1=MAIN_ARENA)
        builder.add(7, call("malloc", start, duration + 1_000, call("_int_malloc", start + 50, duration + 500, grow)))
    for start, wait in ((5_000_000, 4_000), (6_000_000, 6_000)):
        builder.add(8, call("__lll_lock_wait_private", start, wait,
                            call("futex", start + 10, wait - 100, argument0=MAIN_ARENA, flags=ARENA_FLAGS),
                            argument0=MAIN_ARENA, flags=ARENA_FLAGS))
    builder.add(8, call("__lll_lock_wait_private", 7_000_000, 50_000, argument0=0x4242))
    return builder.build(duration_ns=10_000_000)


def text_of(trace, options: AnalysisOptions | None = None) -> str:
    buffer = io.StringIO()
    render_report(trace, options, Console(file=buffer, width=200, color_system=None))
    return buffer.getvalue()


def test_percentiles_nearest_rank() -> None:
    values = np.array([5, 1, 4, 2, 3, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], dtype=np.uint64)
    codes = np.array([0] * 5 + [1] * 10)
    result = grouped_percentiles(codes, values, 3)
    assert result["p50"].tolist() == [3, 50, 0]
    assert result["p95"].tolist() == [5, 100, 0]
    assert result["p99"].tolist() == [5, 100, 0]
    assert result["max"].tolist() == [5, 100, 0]
    histogram = np.zeros(40, dtype=np.int64)
    histogram[10] = 99  # [1024, 2048)
    histogram[20] = 1
    assert histogram_percentile(histogram, 50, 2_000_000) == round(1024 * 2**0.5)
    assert histogram_percentile(histogram, 99, 2_000_000) == round(1024 * 2**0.5)
    assert histogram_percentile(histogram, 100, 1_200_000) == 1_200_000  # clipped to the maximum


def test_function_and_path_tables_hand_computed() -> None:
    analysis = Analysis(hand_trace())
    functions = analysis.function_stats.set_index("name")
    sysmalloc = functions.loc["sysmalloc"]
    assert (sysmalloc["calls"], sysmalloc["total_ns"], sysmalloc["self_ns"]) == (3, 60_000, 30_000)
    assert (sysmalloc["p50_ns"], sysmalloc["p99_ns"], sysmalloc["max_ns"]) == (20_000, 30_000, 30_000)
    assert not sysmalloc["estimated"]
    malloc = functions.loc["malloc"]  # full tier: aggregated, so percentiles are estimates
    assert (malloc["calls"], malloc["total_ns"], malloc["max_ns"], malloc["estimated"]) == (3, 63_000, 31_000, True)
    paths = analysis.path_stats.set_index("label")
    brk = paths.loc["malloc → _int_malloc → sysmalloc → brk"]
    assert (brk["calls"], brk["total_ns"], brk["p50_ns"]) == (3, 30_000, 10_000)
    # Allocator time: the three top-level mallocs + the two arena waits; the stdio wait does not count.
    assert analysis.allocator_ns == 63_000 + 10_000
    assert paths.loc["malloc"]["time_share"] == pytest.approx(63_000 / 73_000)


def test_syscalls_locks_growth_threads_hand_computed() -> None:
    analysis = Analysis(hand_trace())
    syscalls = analysis.syscall_stats.set_index("name")
    assert syscalls.loc["brk"].tolist() == [3, 30_000, 2 * 0x21000, 3]  # the first brk has no previous break
    assert syscalls.loc["futex"].tolist() == [2, 9_800, 0, 2]
    assert locks.lock_wait_summary(analysis) == {"waits": 2, "total_ns": 10_000}  # futexes inside not recounted
    arenas = locks.arena_table(analysis)
    assert arenas[["arena", "main", "waits", "total_ns", "p50_ns", "max_ns", "threads"]].values.tolist() == [
        [MAIN_ARENA, True, 2, 10_000, 4_000, 6_000, 1]]
    grow = growth.grow_table(analysis)
    assert grow[0]["function"] == "sysmalloc" and grow[0]["calls"] == 3 and grow[0]["stalls_with_syscalls"] == 3
    assert grow[0]["syscalls"][0]["name"] == "brk" and grow[0]["syscalls"][0]["grown_bytes"] == 2 * 0x21000
    threads = analysis.thread_stats
    assert threads.loc[7, "allocator_ns"] == 60_000 and threads.loc[8, "lock_wait_ns"] == 10_000
    assert threads.loc[7, "arena"] == MAIN_ARENA


def test_filters_by_thread_and_window() -> None:
    trace = hand_trace()
    assert Analysis(trace, AnalysisOptions(tid=8)).function_stats.set_index("name").index.tolist()[0] == \
        "__lll_lock_wait_private"
    windowed = Analysis(trace, AnalysisOptions(since=0.0015, until=0.0035))
    assert windowed.function_stats.set_index("name").loc["sysmalloc", "calls"] == 2
    assert windowed.duration_ns == 2_000_000
    assert "aggregated (--full) calls excluded" in text_of(trace, AnalysisOptions(tid=7))


def test_narrowed_columns_give_identical_numbers() -> None:
    trace = make_trace(seed=5)
    wide = build_summary(trace)
    trace.events = compact_events(trace.events)
    assert trace.events["duration_ns"].dtype != np.uint64
    assert build_summary(trace) == wide


def test_findings_present_in_realistic_trace() -> None:
    kinds = [finding.kind for finding in find(Analysis(make_trace()))]
    assert kinds[0] == "arena-lock-contention"
    assert {"small-heap-growth", "brk-trim-cycles", "mmap-thrash"} <= set(kinds)
    shares = [finding.share for finding in find(Analysis(make_trace()))]
    assert all(0 < share < 1 for share in shares)


def test_no_findings_without_evidence() -> None:
    quiet = make_trace(contention=False, growth=False, native=False)
    assert find(Analysis(quiet)) == []
    assert locks.lock_wait_summary(Analysis(quiet))["waits"] == 0
    assert "none: no allocator problem" in text_of(quiet)
    # Default arenas, no sharing, growth still present: no arena-wait finding.
    kinds = {finding.kind for finding in find(Analysis(make_trace(contention=False, native=False)))}
    assert "arena-lock-contention" not in kinds and "small-heap-growth" in kinds


def test_arena_attribution_main_and_other() -> None:
    arenas = locks.arena_table(Analysis(make_trace())).set_index("arena")
    assert arenas.loc[MAIN_ARENA, "main"] and not arenas.loc[OTHER_ARENA, "main"]
    assert arenas.loc[MAIN_ARENA, "waits"] == 300 and arenas.loc[OTHER_ARENA, "waits"] == 40


def test_summary_schema_keys() -> None:
    summary = build_summary(make_trace())
    assert summary["schema"] == "arena-trace/summary/1"
    assert {"schema", "target", "duration_ns", "completeness", "functions", "paths", "lock_waits", "syscalls",
            "threads", "findings"} <= set(summary)
    assert set(summary["target"]) == {"pid", "comm", "allocators"}
    assert set(summary["target"]["allocators"][0]) == {"name", "path", "build_id", "version"}
    assert {"probes_attached", "probes_failed", "events_lost", "stacks_truncated"} <= set(summary["completeness"])
    stat_keys = {"calls", "total_ns", "self_ns", "p50_ns", "p95_ns", "p99_ns", "max_ns"}
    assert stat_keys <= set(summary["functions"]["malloc"])
    assert {"path", "calls", "total_ns", "p99_ns"} <= set(summary["paths"][0])
    assert {"waits", "total_ns", "arenas"} <= set(summary["lock_waits"])
    assert {"arena", "main", "waits", "total_ns", "p99_ns", "threads", "top_stacks"} <= set(
        summary["lock_waits"]["arenas"][0])
    assert {"calls", "total_ns", "bytes", "in_allocator"} == set(summary["syscalls"]["brk"])
    assert {"kind", "share", "message"} <= set(summary["findings"][0])
    json.dumps(summary)  # plain JSON types only


def test_hostile_strings_are_escaped() -> None:
    hostile = "[bold red]x[/]\x1b[2J\x07"
    trace = make_trace(thread_names={1001: hostile})
    trace.metadata["target"]["comm"] = "[link=http://evil]c[/link]\x1b]0;title\x07"
    trace.frames.loc[0, "symbol"] = "evil\x1b[31m[/]"
    text = text_of(trace, AnalysisOptions(by="stack"))
    assert "\x1b" not in text and "\x07" not in text
    assert "[bold red]x[/]\\x1b[2J\\x07" in text
    assert "[link=http://evil]c[/link]\\x1b]0;title\\x07" in text
    text = text_of(trace)
    assert "\x1b" not in text and "[bold red]x[/]" in text


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace_file(make_trace(), tmp_path / "ok.atrace")
    assert main(["analyze", str(path)]) == 0
    output = capsys.readouterr().out
    assert "Hot call paths" in output and "Completeness:" in output and "\x1b" not in output
    assert main(["analyze", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "arena-trace/summary/1"
    json_file, csv_file, parquet_file, png = (tmp_path / name for name in ("s.json", "e.csv", "e.parquet", "t.png"))
    assert main(["analyze", str(path), "--json", str(json_file), "--csv", str(csv_file), "--parquet",
                 str(parquet_file), "--timeline", "--interval", "0.5", "--plot", str(png), "--by", "arena",
                 "--top", "3"]) == 0
    assert "Timeline" in capsys.readouterr().out
    assert json_file.exists() and csv_file.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", str(path), "--csv", str(csv_file)]) == 7  # exists without --force
    capsys.readouterr()
    cut = tmp_path / "cut.atrace"
    cut.write_bytes(path.read_bytes()[:-30])
    assert main(["analyze", str(cut)]) == 8
    captured = capsys.readouterr()
    assert "Hot call paths" in captured.out and "no footer" in captured.err
    bad = tmp_path / "bad.atrace"
    bad.write_bytes(b"hello")
    assert main(["analyze", str(bad)]) == 3
    assert "not an arena-trace file" in capsys.readouterr().err
    assert main(["analyze", str(path), "--since", "2", "--until", "1"]) == 2
    with pytest.raises(SystemExit) as caught:
        main(["analyze", str(path), "--by", "nonsense"])
    assert caught.value.code == 2


def test_every_by_mode_renders() -> None:
    trace = make_trace()
    for by in ("path", "function", "arena", "thread", "stack"):
        assert "Completeness:" in text_of(trace, AnalysisOptions(by=by, top=4))


def test_debug_dir_names_unnamed_frames(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("gcc not available")
    source = tmp_path / "h.c"
    source.write_text("int hello_function(int x) { return x * 3; }\n")
    library = tmp_path / "libh.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--build-id", "-o", str(library), str(source)], check=True)
    from arena_trace.tracer.elf_file import open_elf
    from arena_trace.tracer.symbols import build_symbol_table

    with open_elf(library) as elf:
        build_id = elf.build_id
    address = build_symbol_table(str(library)).lookup("hello_function").address
    debug_root = tmp_path / "debug"
    target = debug_root / ".build-id" / build_id[:2] / (build_id[2:] + ".debug")
    target.parent.mkdir(parents=True)
    shutil.copy(library, target)
    trace = make_trace()
    trace.frames.loc[len(trace.frames)] = [999, "/gone/libh.so", build_id, address + 4, "", None, None, None]
    path = write_trace_file(trace, tmp_path / "t.atrace")
    from arena_trace.analysis.trace_reader import read_trace

    frames = read_trace(path, debug_dirs=(str(debug_root),)).frames.set_index("frame_id")
    assert frames.loc[999, "symbol"] == "hello_function" and frames.loc[999, "symbol_offset"] == 4
    assert read_trace(path).frames.set_index("frame_id").loc[999, "symbol"] == ""
