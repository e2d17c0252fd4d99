"""Flamegraph exports: totals equal the report's rules, files validate, malformed inputs give clear messages."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest
from arena_trace.analysis import export_pprof, export_speedscope, pprof_reader
from arena_trace.analysis.profiles import Metric, NothingToExport, build_profiles, metric_total
from arena_trace.analysis.protobuf_wire import MessageWriter, decode_varint, encode_varint, iterate_fields
from arena_trace.analysis.speedscope_assets import INSTALL_HINT, schema_path
from arena_trace.analysis.speedscope_validation import SpeedscopeValidationError, schema_errors, validate
from export_fixtures import EXPECTED_TOTALS, GROWTH, MAIN_ARENA, make_empty_trace, make_export_trace

from arena_trace.commands import flamegraph
from arena_trace.errors import OutputError


def shipped_schema() -> dict:
    path = schema_path()
    assert path is not None, f"speedscope's file-format-schema.json is missing: {INSTALL_HINT}"
    return json.loads(path.read_text())


def parse_folded(text: str) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, weight = line.rpartition(" ")
        assert stack and weight.isdigit(), line
        stacks[stack] = stacks.get(stack, 0) + int(weight)
    return stacks


# --- metric rules -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", list(Metric), ids=lambda metric: metric.cli_name)
def test_metric_totals_follow_the_documented_rules(metric: Metric) -> None:
    assert metric_total(make_export_trace(), metric) == EXPECTED_TOTALS[metric.cli_name]


def test_stacks_are_root_first_with_allocator_frames_below_the_application() -> None:
    profile = build_profiles(make_export_trace(), [Metric.HEAP_GROWTH])[Metric.HEAP_GROWTH]
    stacks = {tuple(frame.name for frame in sample.frames): weight for sample, weight in profile.weights.items()}
    # brk is a syscall carrying sysmalloc's stack: appended as the leaf, nothing duplicated.
    assert stacks[("main", "handle_request", "__libc_malloc", "_int_malloc", "sysmalloc", "brk")] == GROWTH
    # no stack: the allocator call path under a synthetic root; the PROT_NONE mmap of new_heap is no growth.
    assert stacks[("[no stack]", "sysmalloc", "new_heap", "mprotect")] == GROWTH
    assert len(stacks) == 2


def test_lock_waits_keep_arena_and_thread_and_skip_other_locks() -> None:
    profile = build_profiles(make_export_trace(), [Metric.LOCK_WAIT])[Metric.LOCK_WAIT]
    by_arena = {(sample.arena, sample.main_arena, sample.tid): weight for sample, weight in profile.weights.items()}
    assert by_arena == {(MAIN_ARENA, True, 102): 7000, (None, False, None): 2500}


def test_file_and_line_reach_the_frames() -> None:
    profile = build_profiles(make_export_trace(), [Metric.ALLOCATOR_TIME])[Metric.ALLOCATOR_TIME]
    frames = {frame.name: frame for sample in profile.weights for frame in sample.frames}
    assert (frames["handle_request"].file, frames["handle_request"].line) == ("server.c", 42)
    assert frames["server+0x1700"].file is None  # unsymbolized frame named module+offset, not "nan"


# --- speedscope ------------------------------------------------------------------------------------------

def test_speedscope_export_validates_against_the_shipped_schema(tmp_path: Path) -> None:
    path = tmp_path / "out.speedscope.json"
    assert flamegraph.export(make_export_trace(), "speedscope", path) == [path]
    document = json.loads(path.read_text())
    assert schema_errors(document, shipped_schema()) == []
    validate(document, require_schema=True)
    names = [profile["name"] for profile in document["profiles"]]
    assert names[:5] == ["allocator time, all threads", "arena lock wait, all threads",
                         "heap grow time (sysmalloc), all threads", "heap bytes grown, all threads",
                         "allocator calls, all threads"]
    assert "timeline, thread 102 (worker-1)" in names and "timeline, thread 101 (server)" in names
    units = {profile["name"]: profile["unit"] for profile in document["profiles"]}
    assert units["heap bytes grown, all threads"] == "bytes" and units["allocator calls, all threads"] == "none"
    frames = document["shared"]["frames"]
    for profile in document["profiles"][:5]:
        metric = Metric.from_cli({"allocator time": "allocator-time", "arena lock wait": "lock-wait",
                                  "heap grow time (sysmalloc)": "grow-time", "heap bytes grown": "heap-growth",
                                  "allocator calls": "calls"}[profile["name"].split(",")[0]])
        assert sum(profile["weights"]) == EXPECTED_TOTALS[metric.cli_name] == profile["endValue"]
    allocator = document["profiles"][0]
    leaves = {frames[stack[-1]]["name"] for stack in allocator["samples"]}
    assert {"sysmalloc", "brk", "__lll_lock_wait_private", "malloc", "mprotect"} <= leaves
    assert any(frame.get("file") == "server.c" and frame.get("line") == 42 for frame in frames)


def test_speedscope_timeline_nests_calls_in_time_order() -> None:
    document = export_speedscope.build_document(make_export_trace())
    frames = document["shared"]["frames"]
    timeline = next(p for p in document["profiles"] if p["name"] == "timeline, thread 101 (server)")
    opened = [(frames[event["frame"]]["name"], event["at"]) for event in timeline["events"] if event["type"] == "O"]
    assert opened == [("main", 0), ("handle_request", 0), ("__libc_malloc", 0), ("_int_malloc", 0),
                      ("sysmalloc", 0), ("brk", 500), ("brk", 2000)]
    worker = next(p for p in document["profiles"] if p["name"] == "timeline, thread 102 (worker-1)")
    names = [frames[event["frame"]]["name"] for event in worker["events"] if event["type"] == "O"]
    assert names[-3:] == ["new_heap", "mmap", "mprotect"]  # nested via parent_call_id under sysmalloc


def test_single_metric_speedscope(tmp_path: Path) -> None:
    document = export_speedscope.build_document(make_export_trace(), Metric.LOCK_WAIT)
    assert [profile["name"] for profile in document["profiles"]][0] == "arena lock wait, all threads"
    assert all("timeline" not in profile["name"] for profile in document["profiles"])


def test_broken_call_links_still_give_a_valid_timeline() -> None:
    """Parent links the recorder should never write (a cycle, a call its own parent, a lost parent) must not
    break the array-based timeline: calls in a cycle are not shown, the others nest or are top-level."""
    import dataclasses

    trace = make_export_trace()
    events = trace.events.copy()
    ids = events["call_id"].to_numpy()
    parents = events["parent_call_id"].to_numpy().copy()
    parents[1], parents[2] = ids[2], ids[1]
    parents[3] = ids[3]
    parents[4] = 999_999
    events["parent_call_id"] = parents
    trace = dataclasses.replace(trace, events=events)
    document = export_speedscope.build_document(trace)  # validated inside
    assert sum(document["profiles"][0]["weights"]) == metric_total(trace, Metric.ALLOCATOR_TIME)
    assert any(profile["type"] == "evented" for profile in document["profiles"])


def _valid_document() -> dict:
    return export_speedscope.build_document(make_export_trace())


@pytest.mark.parametrize("breakage", ["frame out of range", "unclosed event", "time goes back", "weights length",
                                      "end before start", "bad unit", "wrong close"])
def test_validator_rejects_files_speedscope_cannot_open(breakage: str) -> None:
    document = copy.deepcopy(_valid_document())
    sampled = document["profiles"][0]
    evented = next(profile for profile in document["profiles"] if profile["type"] == "evented")
    if breakage == "frame out of range":
        sampled["samples"][0].append(len(document["shared"]["frames"]))
    elif breakage == "unclosed event":
        evented["events"].pop()
    elif breakage == "time goes back":
        evented["events"][-1]["at"] = -1
    elif breakage == "weights length":
        sampled["weights"].append(1)
    elif breakage == "end before start":
        sampled["startValue"] = sampled["endValue"] + 1
    elif breakage == "bad unit":
        sampled["unit"] = "allocs"
    elif breakage == "wrong close":
        closes = [event for event in evented["events"] if event["type"] == "C"]
        closes[0]["frame"], closes[-1]["frame"] = closes[-1]["frame"], closes[0]["frame"]
    with pytest.raises(SpeedscopeValidationError):
        validate(document)


def test_schema_subset_validator_agrees_with_jsonschema() -> None:
    from arena_trace.analysis.speedscope_validation import _SubsetValidator

    schema = shipped_schema()
    good = _valid_document()
    assert _SubsetValidator(schema).errors(good) == [] == schema_errors(good, schema)
    bad = copy.deepcopy(good)
    del bad["$schema"]
    bad["profiles"][0]["unit"] = "allocs"
    assert _SubsetValidator(schema).errors(bad) and schema_errors(bad, schema)


# --- folded -------------------------------------------------------------------------------------------------

def test_folded_per_metric_totals_match_the_report(tmp_path: Path) -> None:
    written = flamegraph.export(make_export_trace(), "folded", tmp_path / "trace.folded")
    assert sorted(path.name for path in written) == sorted(f"trace.{m.cli_name}.folded" for m in Metric)
    for path in written:
        metric = path.name.split(".")[1]
        stacks = parse_folded(path.read_text())
        assert sum(stacks.values()) == EXPECTED_TOTALS[metric]
    allocator = parse_folded((tmp_path / "trace.allocator-time.folded").read_text())
    assert allocator["main;handle_request;__libc_malloc;_int_malloc;sysmalloc;brk"] == 2000
    # The frame with ';', quotes and a newline in its name stays one frame on one line.
    assert any(stack.startswith('start_thread;worker: "quoted" name;server+0x1700;') for stack in allocator)


def test_folded_single_metric_writes_exactly_the_output(tmp_path: Path) -> None:
    path = tmp_path / "waits.txt"
    assert flamegraph.export(make_export_trace(), "folded", path, "lock-wait") == [path]
    assert sum(parse_folded(path.read_text()).values()) == EXPECTED_TOTALS["lock-wait"]


# --- pprof --------------------------------------------------------------------------------------------------

def test_pprof_parses_back_with_all_sample_types_and_totals(tmp_path: Path) -> None:
    path = tmp_path / "trace.pb.gz"
    flamegraph.export(make_export_trace(), "pprof", path)
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    profile = pprof_reader.decode(data)
    assert profile.sample_types == [("alloc_time", "nanoseconds"), ("lock_wait", "nanoseconds"),
                                    ("grow_time", "nanoseconds"), ("heap_growth", "bytes"), ("calls", "count")]
    assert profile.default_sample_type == "alloc_time"
    assert profile.string_table[0] == ""
    assert profile.totals() == {metric.pprof_type: EXPECTED_TOTALS[metric.cli_name] for metric in Metric}
    waits = [sample for sample in profile.samples if sample["values"][1]]
    labels = {(sample["labels"].get("tid"), sample["labels"].get("arena")) for sample in waits}
    assert labels == {(102, f"{MAIN_ARENA:#x}"), (None, None)}
    assert any(sample["labels"].get("thread") == "worker-1" for sample in waits)
    stacks = {tuple(profile.root_first_names(sample)) for sample in profile.samples}
    assert ("main", "handle_request", "__libc_malloc", "_int_malloc", "sysmalloc", "brk") in stacks
    build_ids = {mapping["build_id"] for mapping in profile.mappings.values()}
    assert "93ac61ec5a8eb1396f9fbd350e3169a558528a40" in build_ids
    files = {function["filename"] for function in profile.functions.values()}
    assert "malloc.c" in files
    lines = {line for location in profile.locations.values() for _function, line in location["lines"]}
    assert 42 in lines


def test_pprof_single_metric() -> None:
    profile = pprof_reader.decode(export_pprof.build_profile(make_export_trace(), Metric.HEAP_GROWTH))
    assert profile.sample_types == [("heap_growth", "bytes")]
    assert profile.totals() == {"heap_growth": EXPECTED_TOTALS["heap-growth"]}


def test_protobuf_wire_round_trip() -> None:
    for value in (0, 1, 127, 128, 300, (1 << 63) - 1, (1 << 64) - 1):
        assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))
    assert encode_varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1 is ten bytes, as protobuf encodes it
    message = MessageWriter().varint(1, 150).string(2, "testing").packed_varints(3, [3, 270, 86942]).to_bytes()
    assert message[:3] == b"\x08\x96\x01"  # the protobuf documentation's own example for 150
    fields = list(iterate_fields(message))
    assert fields[0] == (1, 0, 150) and fields[1] == (2, 2, b"testing")
    assert fields[2] == (3, 2, b"\x03\x8e\x02\x9e\xa7\x05")


# --- malformed inputs and the command -------------------------------------------------------------------

@pytest.mark.parametrize("output_format", flamegraph.FORMATS)
def test_empty_trace_is_refused_and_nothing_is_written(tmp_path: Path, output_format: str) -> None:
    path = tmp_path / "out"
    with pytest.raises(NothingToExport, match="no allocator activity"):
        flamegraph.export(make_empty_trace(), output_format, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output_format", flamegraph.FORMATS)
def test_trace_without_stacks_still_exports_allocator_paths(tmp_path: Path, output_format: str) -> None:
    trace = make_export_trace(with_stacks=False)
    written = flamegraph.export(trace, output_format, tmp_path / "out", "allocator-time")
    data = written[0].read_bytes()
    if output_format == "speedscope":
        document = json.loads(data)
        validate(document, require_schema=True)
        names = {frame["name"] for frame in document["shared"]["frames"]}
        assert {"[no stack]", "sysmalloc", "brk", "malloc"} <= names
        assert sum(document["profiles"][0]["weights"]) == EXPECTED_TOTALS["allocator-time"]
    elif output_format == "folded":
        stacks = parse_folded(data.decode())
        assert stacks["[no stack];sysmalloc;brk"] == 2000
        assert sum(stacks.values()) == EXPECTED_TOTALS["allocator-time"]
    else:
        assert pprof_reader.decode(data).totals() == {"alloc_time": EXPECTED_TOTALS["allocator-time"]}


def test_existing_output_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("keep me")
    with pytest.raises(OutputError, match="--force"):
        flamegraph.export(make_export_trace(), "speedscope", path)
    assert path.read_text() == "keep me"
    flamegraph.export(make_export_trace(), "speedscope", path, force=True)
    validate(json.loads(path.read_text()))
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def _run_command(arguments: list[str], monkeypatch: pytest.MonkeyPatch, trace) -> int:
    """Runs `arena-trace flamegraph ...` with the trace reader replaced by an in-memory trace."""
    import types

    from arena_trace import cli

    reader = types.ModuleType("arena_trace.analysis.trace_reader")
    reader.read_trace = lambda path, *rest: trace  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "arena_trace.analysis.trace_reader", reader)
    return cli.main(["flamegraph", *arguments])


def test_command_exit_codes_and_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    trace_path = tmp_path / "run.atrace"
    trace_path.write_bytes(b"")
    assert _run_command([str(trace_path), "--format", "pprof"], monkeypatch, make_export_trace()) == 0
    assert (tmp_path / "run.pb.gz").exists()
    assert "wrote" in capsys.readouterr().out
    assert _run_command([str(trace_path), "--format", "pprof"], monkeypatch, make_export_trace()) == 7
    assert "already exists (use --force" in capsys.readouterr().err

    assert _run_command([str(trace_path), "-o", str(tmp_path / "e.json")], monkeypatch, make_empty_trace()) == 3
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no allocator activity" in error
    assert not (tmp_path / "e.json").exists()

    code = _run_command([str(trace_path), "-o", str(tmp_path / "n.json")], monkeypatch,
                        make_export_trace(with_stacks=False))
    assert code == 0 and "no stacks" in capsys.readouterr().err
    validate(json.loads((tmp_path / "n.json").read_text()))


def test_gzip_is_deterministic() -> None:
    first = gzip.compress(export_pprof.build_profile(make_export_trace()), mtime=0)
    assert first == gzip.compress(export_pprof.build_profile(make_export_trace()), mtime=0)


# --- against the analyze report, on the shared synthetic recording written to and read from a real file ------

@pytest.mark.parametrize("options", [{}, {"full": False}, {"seed": 3, "threads": 8, "contention": False}],
                         ids=["full", "slow-tier", "no-contention"])
def test_flamegraph_totals_equal_the_report(tmp_path: Path, options: dict) -> None:
    from arena_trace.analysis.aggregate import Analysis
    from arena_trace.analysis.locks import lock_wait_summary
    from arena_trace.analysis.trace_reader import read_trace
    from synthetic import make_trace, write_trace_file

    trace = read_trace(write_trace_file(make_trace(**options), tmp_path / "run.atrace"))
    report = Analysis(trace)
    expected = {"alloc_time": report.allocator_ns, "lock_wait": lock_wait_summary(report)["total_ns"]}
    assert metric_total(trace, Metric.ALLOCATOR_TIME) == expected["alloc_time"]
    assert metric_total(trace, Metric.LOCK_WAIT) == expected["lock_wait"]

    written = {output_format: flamegraph.export(trace, output_format, tmp_path / f"out-{output_format}")
               for output_format in flamegraph.FORMATS}
    document = json.loads(written["speedscope"][0].read_text())
    validate(document, require_schema=True)
    sampled = {profile["name"]: sum(profile["weights"]) for profile in document["profiles"]
               if profile["type"] == "sampled"}
    assert sampled["allocator time, all threads"] == expected["alloc_time"]
    assert sampled.get("arena lock wait, all threads", 0) == expected["lock_wait"]
    folded = {path.name.split(".")[1]: sum(parse_folded(path.read_text()).values()) for path in written["folded"]}
    assert folded["allocator-time"] == expected["alloc_time"]
    assert folded.get("lock-wait", 0) == expected["lock_wait"]
    totals = pprof_reader.decode(written["pprof"][0].read_bytes()).totals()
    assert totals["alloc_time"] == expected["alloc_time"]
    assert totals.get("lock_wait", 0) == expected["lock_wait"]


def test_view_serves_on_loopback_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from arena_trace.analysis.speedscope_assets import release_directory

    assert release_directory() is not None, f"speedscope is missing: {INSTALL_HINT}"
    profile = tmp_path / "given.speedscope.json"
    profile.write_bytes(export_speedscope.to_json(export_speedscope.build_document(make_export_trace())))
    process = subprocess.Popen([sys.executable, "-m", "arena_trace", "view", str(profile)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "#profileURL=%2Fprofiles%2Fgiven.speedscope.json" in url
        base = url.split("#")[0]
        with urllib.request.urlopen(base, timeout=5) as response:
            assert b"speedscope" in response.read()
        with urllib.request.urlopen(base + "profiles/given.speedscope.json", timeout=5) as response:
            assert response.read() == profile.read_bytes()  # an existing speedscope file is served as is
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
