"""pprof export: a gzipped ``perftools.profiles.Profile`` (profile.proto), written with analysis.protobuf_wire.

One profile holds every metric as a sample type (``alloc_time/nanoseconds``, ``lock_wait/nanoseconds``, ...), or
only the chosen one. Samples carry labels ``tid`` (number), ``thread`` (name), ``arena`` (address, hex) and
``arena_kind`` (main/other). Location ids are leaf first, as profile.proto requires. Real frames get a mapping
per (module, build-id); because a trace stores module offsets and not run-time addresses, each mapping is given
a disjoint synthetic address range whose ``address - memory_start + file_offset`` is the module offset.
Mappings say has_functions/has_filenames/has_line_numbers so pprof does not try to symbolize them again.
Only profile.proto fields 1-14 are written (what every pprof reader knows).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from arena_trace.analysis.output_files import write_bytes
from arena_trace.analysis.profile_stacks import Frame
from arena_trace.analysis.profiles import Metric, NothingToExport, Sample, build_profiles, thread_names
from arena_trace.analysis.protobuf_wire import MessageWriter
from arena_trace.tracer.trace_format import Trace

_MAPPING_STRIDE = 1 << 40  # room for any module's offsets between two synthetic mapping starts


class _StringTable:
    def __init__(self) -> None:
        self.strings: list[str] = [""]  # profile.proto: entry 0 must be the empty string
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str | None) -> int:
        text = text or ""
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.strings)
            self.strings.append(text)
        return index


class _ProfileEncoder:
    def __init__(self, trace: Trace) -> None:
        self.strings = _StringTable()
        self.names = thread_names(trace)
        self.mappings: dict[tuple[str, str | None], dict[str, int]] = {}
        self.functions: dict[tuple[str, str | None], int] = {}
        self.locations: dict[Frame, int] = {}
        self.location_messages: list[MessageWriter] = []

    def _mapping(self, frame: Frame) -> dict[str, int]:
        key = (frame.module or "", frame.build_id)
        mapping = self.mappings.get(key)
        if mapping is None:
            identifier = len(self.mappings) + 1
            mapping = self.mappings[key] = {"id": identifier, "start": identifier * _MAPPING_STRIDE, "limit": 0}
        return mapping

    def _function(self, frame: Frame) -> int:
        key = (frame.name, frame.file)
        identifier = self.functions.get(key)
        if identifier is None:
            identifier = self.functions[key] = len(self.functions) + 1
        return identifier

    def location(self, frame: Frame) -> int:
        identifier = self.locations.get(frame)
        if identifier is not None:
            return identifier
        identifier = self.locations[frame] = len(self.locations) + 1
        message = MessageWriter().varint(1, identifier)
        if not frame.synthetic:
            mapping = self._mapping(frame)
            offset = frame.module_offset or 0
            mapping["limit"] = max(mapping["limit"], offset + 1)
            message.varint(2, mapping["id"]).varint(3, mapping["start"] + offset)
        line = MessageWriter().varint(1, self._function(frame)).varint(2, frame.line or 0)
        message.message(4, line)
        self.location_messages.append(message)
        return identifier

    def sample(self, sample: Sample, values: list[int]) -> MessageWriter:
        message = MessageWriter()
        message.packed_varints(1, [self.location(frame) for frame in reversed(sample.frames)])  # leaf first
        message.packed_varints(2, values)
        if sample.tid is not None:
            message.message(3, MessageWriter().varint(1, self.strings("tid")).varint(3, sample.tid))
            name = self.names.get(sample.tid)
            if name:
                message.message(3, MessageWriter().varint(1, self.strings("thread")).varint(2, self.strings(name)))
        if sample.arena is not None:
            arena = MessageWriter().varint(1, self.strings("arena")).varint(2, self.strings(f"{sample.arena:#x}"))
            message.message(3, arena)
        if sample.main_arena is not None:
            kind = "main" if sample.main_arena else "other"
            message.message(3, MessageWriter().varint(1, self.strings("arena_kind")).varint(2, self.strings(kind)))
        return message


def build_profile(trace: Trace, metric: Metric | None = None) -> bytes:
    """The serialized (not yet gzipped) Profile message; raises NothingToExport when every total is 0."""
    metrics = [metric] if metric else list(Metric)
    profiles = build_profiles(trace, metrics)
    metrics = [candidate for candidate in metrics if profiles[candidate].total > 0]
    if not metrics:
        raise NothingToExport("the trace has no allocator activity to export")
    values: dict[Sample, list[int]] = {}
    for position, candidate in enumerate(metrics):
        for sample, weight in profiles[candidate].weights.items():
            values.setdefault(sample, [0] * len(metrics))[position] += weight

    encoder = _ProfileEncoder(trace)
    strings = encoder.strings
    profile = MessageWriter()
    for candidate in metrics:
        value_type = MessageWriter().varint(1, strings(candidate.pprof_type)).varint(2, strings(candidate.pprof_unit))
        profile.message(1, value_type)
    for sample, sample_values in values.items():
        profile.message(2, encoder.sample(sample, sample_values))
    for (module, build_id), mapping in encoder.mappings.items():
        profile.message(3, MessageWriter().varint(1, mapping["id"]).varint(2, mapping["start"])
                        .varint(3, mapping["start"] + max(mapping["limit"], 1)).varint(4, 0)
                        .varint(5, strings(module)).varint(6, strings(build_id))
                        .boolean(7, True).boolean(8, True).boolean(9, True))
    for message in encoder.location_messages:
        profile.message(4, message)
    for (name, file), identifier in encoder.functions.items():
        profile.message(5, MessageWriter().varint(1, identifier).varint(2, strings(name))
                        .varint(3, strings(name)).varint(4, strings(file)))
    duration = int(trace.footer.get("duration_ns") or 0)
    target = trace.metadata.get("target", {})
    comment = strings(f"arena-trace export of {target.get('comm', '?')} (pid {target.get('pid', '?')})")
    default_type = strings(metrics[0].pprof_type)
    # The string table goes last because the fields above keep adding to it.
    profile.varint(10, duration).packed_varints(13, [comment]).varint(14, default_type)
    for text in strings.strings:
        profile.string(6, text)
    return profile.to_bytes()


def export(trace: Trace, path: Path, metric: Metric | None = None, force: bool = False) -> None:
    data = gzip.compress(build_profile(trace, metric), mtime=0)
    write_bytes(path, data, force)
