"""Trace file reading: every bad-file case, tail damage, and live-vs-offline equality."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from arena_trace.analysis.aggregate import AnalysisOptions  # noqa: E402
from arena_trace.analysis.report import render_report  # noqa: E402
from arena_trace.analysis.summary import build_summary  # noqa: E402
from arena_trace.analysis.trace_reader import read_trace  # noqa: E402
from arena_trace.tracer.trace_format import (  # noqa: E402
    HEADER,
    MAX_SECTION_BYTES,
    SECTION_HEADER,
    Encoding,
    SectionKind,
    encode_header,
    encode_section,
)
from synthetic import make_trace, write_trace_file  # noqa: E402

from arena_trace.errors import BadTraceError  # noqa: E402


@pytest.fixture(scope="module")
def trace():
    return make_trace(seed=3)


@pytest.fixture()
def trace_file(trace, tmp_path: Path) -> Path:
    return write_trace_file(trace, tmp_path / "run.atrace", batch_rows=200)


def sections(path: Path) -> list[tuple[int, int, int]]:
    """(kind, start offset, end offset) of every section."""
    data = path.read_bytes()
    position, found = HEADER.size, []
    while position < len(data):
        _, kind, _, _, length, _ = SECTION_HEADER.unpack_from(data, position)
        end = position + SECTION_HEADER.size + length
        found.append((kind, position, end))
        position = end
    return found


def rendered(trace, options: AnalysisOptions | None = None) -> str:
    buffer = io.StringIO()
    render_report(trace, options, Console(file=buffer, width=200, color_system=None))
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty file"),
    (os.urandom(4096).replace(b"ARENATRC", b"xxxxxxxx"), "bad magic"),
    (b"ARENAT", "truncated header"),
    (b"ARENATRC\x01\x00", "truncated header"),
    (struct.pack("<8sHHI", b"ARENATRC", 2, 0, 0), "unsupported trace format version 2"),
    (encode_header(), "no METADATA"),
    (encode_header() + encode_section(SectionKind.EVENTS, Encoding.ARROW_IPC, b"x"), "no METADATA"),
    (encode_header() + encode_section(SectionKind.METADATA, Encoding.JSON, b"{not json"), "bad JSON"),
    (encode_header() + encode_section(SectionKind.METADATA, Encoding.JSON, b"[1, 2]"), "not a JSON object"),
])
def test_unusable_files_raise_one_line(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(BadTraceError) as caught:
        read_trace(write(tmp_path / "bad.atrace", data))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadTraceError, match="cannot open"):
        read_trace(tmp_path / "absent.atrace")
    with pytest.raises(BadTraceError, match="directory"):
        read_trace(tmp_path)


def test_intact_file_round_trips(trace, trace_file: Path) -> None:
    loaded = read_trace(trace_file)
    assert loaded.damage == []
    assert len(loaded.events) == len(trace.events)
    for column in trace.events.columns:
        expected = trace.events[column].to_numpy().astype("int64")
        assert (loaded.events[column].to_numpy().astype("int64") == expected).all()
    assert loaded.footer == trace.footer
    assert len(loaded.stacks) == len(trace.stacks) and len(loaded.frames) == len(trace.frames)
    assert loaded.aggregates["calls"].sum() == trace.aggregates["calls"].sum()


def test_file_mode_is_0600(trace_file: Path) -> None:
    assert trace_file.stat().st_mode & 0o777 == 0o600


def test_live_and_offline_reports_are_identical(trace, trace_file: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "copy" / "elsewhere.atrace"
    elsewhere.parent.mkdir()
    shutil.copy(trace_file, elsewhere)
    for options in (AnalysisOptions(), AnalysisOptions(by="function"), AnalysisOptions(by="stack", top=3),
                    AnalysisOptions(tid=1003, since=0.2, until=1.5)):
        live = rendered(trace, options)
        assert live == rendered(read_trace(trace_file), options)
        assert live == rendered(read_trace(elsewhere), options)
        assert build_summary(trace, options) == build_summary(read_trace(elsewhere), options)


def test_truncation_at_each_section_boundary_and_mid_section(trace, trace_file: Path, tmp_path: Path) -> None:
    data = trace_file.read_bytes()
    layout = sections(trace_file)
    metadata_end = layout[0][2]
    cuts = {end for _, _, end in layout[:-1]}
    cuts |= {start + SECTION_HEADER.size // 2 for _, start, _ in layout[1:]}  # inside a section header
    cuts |= {(start + end) // 2 for _, start, end in layout[1:]}  # inside a payload
    for cut in sorted(cuts):
        loaded = read_trace(write(tmp_path / "cut.atrace", data[:cut]))
        assert loaded.damage, cut
        assert any("no footer" in item for item in loaded.damage)
        complete_events = sum(1 for kind, _, end in layout if kind == SectionKind.EVENTS and end <= cut)
        assert len(loaded.events) == min(len(trace.events), complete_events * 200)
        if cut != metadata_end and any(start < cut < end for _, start, end in layout):
            assert any(f"file cut at byte {cut}" in item for item in loaded.damage)
    later_events = [(start, end) for kind, start, end in layout if kind == SectionKind.EVENTS and start > layout[2][1]]
    mid_events = (later_events[0][0] + later_events[0][1]) // 2
    loaded = read_trace(write(tmp_path / "cut.atrace", data[:mid_events]))
    assert any("events after t=" in item and "lost" in item for item in loaded.damage)


def test_partial_trace_still_reports(trace_file: Path, tmp_path: Path) -> None:
    layout = sections(trace_file)
    cut = layout[3][2] + 5
    loaded = read_trace(write(tmp_path / "cut.atrace", trace_file.read_bytes()[:cut]))
    text = rendered(loaded)
    assert "damage:" in text and "file cut at byte" in text


def test_bad_crc_after_events_keeps_earlier_sections(trace_file: Path, tmp_path: Path) -> None:
    data = bytearray(trace_file.read_bytes())
    layout = sections(trace_file)
    _, start, end = [item for item in layout if item[0] == SectionKind.EVENTS][2]
    data[end - 1] ^= 0xFF
    loaded = read_trace(write(tmp_path / "crc.atrace", bytes(data)))
    assert any("fails its checksum" in item for item in loaded.damage)
    assert len(loaded.events) == 400


def test_bad_crc_before_any_event_is_unusable(trace_file: Path, tmp_path: Path) -> None:
    data = bytearray(trace_file.read_bytes())
    _, start, end = sections(trace_file)[1]
    data[end - 1] ^= 0xFF
    with pytest.raises(BadTraceError, match="checksum"):
        read_trace(write(tmp_path / "crc.atrace", bytes(data)))
    data = bytearray(trace_file.read_bytes())
    _, start, end = sections(trace_file)[0]
    data[end - 2] ^= 0xFF
    with pytest.raises(BadTraceError, match="no METADATA"):
        read_trace(write(tmp_path / "crc.atrace", bytes(data)))


def _with_events_section(metadata_file: Path, section: bytes, tmp_path: Path) -> Path:
    data = metadata_file.read_bytes()
    layout = sections(metadata_file)
    first_events = next(start for kind, start, _ in layout if kind == SectionKind.EVENTS)
    second_events = [start for kind, start, _ in layout if kind == SectionKind.EVENTS][1]
    return write(tmp_path / "patched.atrace", data[:second_events] + section + data[second_events:first_events + 1])


def test_huge_declared_section_is_not_allocated(trace_file: Path, tmp_path: Path) -> None:
    huge = SECTION_HEADER.pack(b"SECT", SectionKind.EVENTS, Encoding.ARROW_IPC, 0, MAX_SECTION_BYTES + 1, 0)
    loaded = read_trace(_with_events_section(trace_file, huge, tmp_path))
    assert any("declares" in item and "corrupted" in item for item in loaded.damage)
    assert len(loaded.events) == 200
    beyond = SECTION_HEADER.pack(b"SECT", SectionKind.EVENTS, Encoding.ARROW_IPC, 0, 1 << 29, 0)
    loaded = read_trace(_with_events_section(trace_file, beyond, tmp_path))
    assert any("file cut at byte" in item for item in loaded.damage)


def test_bad_section_magic(trace_file: Path, tmp_path: Path) -> None:
    loaded = read_trace(_with_events_section(trace_file, b"JUNKJUNKJUNKJUNKJUNKJUNK", tmp_path))
    assert any("bad section magic" in item for item in loaded.damage)


def test_wrong_event_schema_and_bad_arrow(trace_file: Path, tmp_path: Path) -> None:
    wrong = pa.record_batch([pa.array([1, 2], type=pa.int64())], names=["timestamp_ns"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, wrong.schema) as writer:
        writer.write(wrong)
    section = encode_section(SectionKind.EVENTS, Encoding.ARROW_IPC, sink.getvalue().to_pybytes())
    loaded = read_trace(_with_events_section(trace_file, section, tmp_path))
    assert any("unexpected schema" in item for item in loaded.damage)
    assert len(loaded.events) == 200
    garbage = encode_section(SectionKind.EVENTS, Encoding.ARROW_IPC, b"\xff" * 64)
    loaded = read_trace(_with_events_section(trace_file, garbage, tmp_path))
    assert any("bad Arrow data" in item for item in loaded.damage)
    bad_json = encode_section(SectionKind.SYMBOLS, Encoding.JSON, b"{oops")
    loaded = read_trace(_with_events_section(trace_file, bad_json, tmp_path))
    assert any("bad JSON" in item for item in loaded.damage)


def test_last_aggregates_win_and_symbols_accumulate(trace, tmp_path: Path) -> None:
    path = write_trace_file(trace, tmp_path / "a.atrace")
    data = path.read_bytes()
    footer_start = sections(path)[-1][1]
    extra_symbols = encode_section(SectionKind.SYMBOLS, Encoding.JSON, json.dumps(
        {"frames": [{"frame_id": 999, "module": "/x", "build_id": None, "module_offset": 16, "symbol": "late"}],
         "stacks": [{"stack_id": 999, "frame_ids": [999], "status": "complete"}]}).encode())
    empty = pa.Table.from_pandas(trace.aggregates.iloc[0:0], preserve_index=False)
    from arena_trace.tracer.trace_format import aggregate_schema, arrow_payload

    empty_aggregates = encode_section(SectionKind.AGGREGATES, Encoding.ARROW_IPC,
                                      arrow_payload(empty.cast(aggregate_schema())))
    loaded = read_trace(write(tmp_path / "b.atrace", data[:footer_start] + extra_symbols + empty_aggregates
                              + data[footer_start:]))
    assert loaded.damage == []
    assert len(loaded.aggregates) == 0
    assert 999 in set(loaded.frames["frame_id"]) and len(loaded.frames) == len(trace.frames) + 1


def test_crc_module_matches_writer(trace_file: Path) -> None:
    data = trace_file.read_bytes()
    _, start, end = sections(trace_file)[0]
    _, _, _, _, _, checksum = SECTION_HEADER.unpack_from(data, start)
    assert zlib.crc32(data[start + SECTION_HEADER.size:end]) == checksum
