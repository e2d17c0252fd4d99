"""A small reader for the pprof files we write: parses them back so tests can compare totals and stacks."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from arena_trace.analysis.protobuf_wire import LENGTH_DELIMITED, decode_packed_varints, iterate_fields, signed64


@dataclass
class DecodedProfile:
    string_table: list[str] = field(default_factory=list)
    sample_types: list[tuple[str, str]] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # {locations: [ids leaf first], values, labels}
    locations: dict[int, dict] = field(default_factory=dict)  # id -> {mapping_id, address, lines}
    functions: dict[int, dict] = field(default_factory=dict)  # id -> {name, filename}
    mappings: dict[int, dict] = field(default_factory=dict)  # id -> {start, limit, filename, build_id}
    default_sample_type: str = ""
    duration_nanos: int = 0
    comments: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        return {kind: sum(sample["values"][index] for sample in self.samples)
                for index, (kind, _unit) in enumerate(self.sample_types)}

    def root_first_names(self, sample: dict) -> list[str]:
        names = []
        for location_id in reversed(sample["locations"]):
            for function_id, _line in reversed(self.locations[location_id]["lines"]):
                names.append(self.functions[function_id]["name"])
        return names


def _message(data: bytes) -> dict[int, list]:
    fields: dict[int, list] = {}
    for number, _wire_type, value in iterate_fields(data):
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields: dict[int, list], number: int, default: int = 0) -> int:
    values = fields.get(number)
    return int(values[-1]) if values else default


def decode(data: bytes) -> DecodedProfile:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    raw = list(iterate_fields(data))
    profile = DecodedProfile()
    profile.string_table = [value.decode("utf-8") for number, wire, value in raw
                            if number == 6 and wire == LENGTH_DELIMITED]
    text = profile.string_table
    if not text or text[0] != "":
        raise ValueError("string_table[0] must be the empty string")
    for number, _wire, value in raw:
        if number == 1:
            fields = _message(value)
            profile.sample_types.append((text[_one(fields, 1)], text[_one(fields, 2)]))
        elif number == 2:
            fields = _message(value)
            labels: dict[str, str | int] = {}
            for label_bytes in fields.get(3, []):
                label = _message(label_bytes)
                key = text[_one(label, 1)]
                labels[key] = text[_one(label, 2)] if 2 in label else _one(label, 3)
            profile.samples.append({
                "locations": [item for chunk in fields.get(1, []) for item in decode_packed_varints(chunk)],
                "values": [signed64(item) for chunk in fields.get(2, []) for item in decode_packed_varints(chunk)],
                "labels": labels,
            })
        elif number == 3:
            fields = _message(value)
            profile.mappings[_one(fields, 1)] = {"start": _one(fields, 2), "limit": _one(fields, 3),
                                                 "filename": text[_one(fields, 5)], "build_id": text[_one(fields, 6)]}
        elif number == 4:
            fields = _message(value)
            lines = [(_one(line, 1), _one(line, 2)) for line in map(_message, fields.get(4, []))]
            profile.locations[_one(fields, 1)] = {"mapping_id": _one(fields, 2), "address": _one(fields, 3),
                                                  "lines": lines}
        elif number == 5:
            fields = _message(value)
            profile.functions[_one(fields, 1)] = {"name": text[_one(fields, 2)], "filename": text[_one(fields, 4)]}
        elif number == 10:
            profile.duration_nanos = signed64(int(value))
        elif number == 13:
            profile.comments += [text[index] for index in decode_packed_varints(value)]
        elif number == 14:
            profile.default_sample_type = text[int(value)]
    _check_references(profile)
    return profile


def _check_references(profile: DecodedProfile) -> None:
    """The consistency rules pprof itself enforces (it rejects files that break them)."""
    for sample in profile.samples:
        if len(sample["values"]) != len(profile.sample_types):
            raise ValueError(f"sample has {len(sample['values'])} values for {len(profile.sample_types)} types")
        for location_id in sample["locations"]:
            if location_id not in profile.locations:
                raise ValueError(f"sample refers to missing location {location_id}")
    for location in profile.locations.values():
        if location["mapping_id"] and location["mapping_id"] not in profile.mappings:
            raise ValueError(f"location refers to missing mapping {location['mapping_id']}")
        for function_id, _line in location["lines"]:
            if function_id not in profile.functions:
                raise ValueError(f"location refers to missing function {function_id}")
