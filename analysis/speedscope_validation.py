"""Checks a speedscope document before it is written.

Two layers, because passing speedscope's JSON schema does not mean the viewer can open the file (a frame
index out of range or an unclosed event passes the schema and shows "Something went wrong"):

1. the shipped schema (``file-format-schema.json`` of the npm package), with ``jsonschema`` when it is
   installed, otherwise with the small draft-07 subset interpreter below (the schema only uses ``$ref``,
   ``type``, ``const``, ``enum``, ``properties``, ``required``, ``items`` and ``anyOf``);
2. hand-written checks of the structure and of the invariants the schema misses: frame indices in range,
   open/close events balanced and properly nested, ``at`` non-decreasing and inside [startValue, endValue],
   ``len(weights) == len(samples)``, ``endValue >= startValue``, finite non-negative numbers.

Layer 2 always runs; layer 1 runs whenever the schema file can be found.
"""

from __future__ import annotations

import json
import math
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from arena_trace.analysis.speedscope_assets import schema_path

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
# Items of each long list the schema layer sees (layer 2 checks all of them; see _skeleton).
SCHEMA_SAMPLE_ITEMS = 16
UNITS = frozenset({"none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"})


class SpeedscopeValidationError(ValueError):
    """The document would not load in speedscope: a bug in the exporter, never written to disk."""


def validate(document: dict[str, Any], schema_file: Path | None = None, require_schema: bool = False) -> None:
    """Raise SpeedscopeValidationError if ``document`` is not a loadable speedscope file."""
    _check_structure(document)
    schema_file = schema_file or schema_path()
    if schema_file is None:
        if require_schema:
            raise SpeedscopeValidationError("speedscope's file-format-schema.json not found")
        return
    schema = json.loads(schema_file.read_text())
    errors = schema_errors(_skeleton(document), schema)
    if errors:
        raise SpeedscopeValidationError(f"schema: {errors[0]} ({len(errors)} error(s))")


def _skeleton(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each profile's long lists cut to their first items, for the schema layer.

    Generic schema validators take tens of seconds on a million events, and still seconds on the 2000 items
    per list this used to keep (jsonschema costs ~20 µs per item, and a document has 16 timelines). Every
    item of those lists comes from the same code, and layer 2 checks each one's keys, types and ranges (all
    the schema says about an item, and more), so the schema only needs to see their shape.
    """
    profiles = []
    for profile in document.get("profiles", []):
        if isinstance(profile, dict):
            profile = {key: (value[:SCHEMA_SAMPLE_ITEMS] if key in ("events", "samples", "weights")
                             and isinstance(value, list) else value) for key, value in profile.items()}
        profiles.append(profile)
    return {**document, "profiles": profiles}


def schema_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    try:
        import jsonschema
    except ImportError:
        return _SubsetValidator(schema).errors(document)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)]


class _SubsetValidator:
    """Interprets the draft-07 keywords that speedscope's schema uses; unknown keywords fail loudly."""

    _KNOWN = frozenset({"$schema", "$ref", "definitions", "title", "type", "const", "enum", "properties",
                        "required", "items", "anyOf"})
    _TYPES = {"object": dict, "array": list, "string": str}

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema

    def errors(self, document: Any) -> list[str]:
        found: list[str] = []
        self._check(document, self.schema, "", found)
        return found

    def _resolve(self, reference: str) -> dict[str, Any]:
        if not reference.startswith("#/"):
            raise SpeedscopeValidationError(f"unsupported schema reference {reference}")
        node: Any = self.schema
        for part in reference[2:].split("/"):
            node = node[part]
        return node

    def _check(self, value: Any, schema: dict[str, Any], where: str, found: list[str]) -> None:
        unknown = set(schema) - self._KNOWN
        if unknown:
            raise SpeedscopeValidationError(f"schema keyword(s) {sorted(unknown)} not supported without jsonschema")
        if "$ref" in schema:
            self._check(value, self._resolve(schema["$ref"]), where, found)
        expected = schema.get("type")
        if expected == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                found.append(f"{where}: {value!r} is not a number")
                return
        elif expected is not None and not isinstance(value, self._TYPES[expected]):
            found.append(f"{where}: expected {expected}")
            return
        if "const" in schema and value != schema["const"]:
            found.append(f"{where}: {value!r} != {schema['const']!r}")
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{where}: {value!r} not one of {schema['enum']}")
        if "anyOf" in schema:
            for option in schema["anyOf"]:
                attempt: list[str] = []
                self._check(value, option, where, attempt)
                if not attempt:
                    break
            else:
                found.append(f"{where}: matches none of the allowed shapes")
        if isinstance(value, dict):
            found += [f"{where}: {key!r} is required" for key in schema.get("required", []) if key not in value]
            for key, child in schema.get("properties", {}).items():
                if key in value:
                    self._check(value[key], child, f"{where}/{key}", found)
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                self._check(item, schema["items"], f"{where}/{index}", found)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpeedscopeValidationError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _check_structure(document: dict[str, Any]) -> None:
    if not isinstance(document, dict) or document.get("$schema") != SCHEMA_URL:
        raise SpeedscopeValidationError(f"$schema must be {SCHEMA_URL}")
    frames = document.get("shared", {}).get("frames")
    if not isinstance(frames, list):
        raise SpeedscopeValidationError("shared.frames must be a list")
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str) or not frame["name"]:
            raise SpeedscopeValidationError(f"shared.frames[{index}] needs a non-empty name")
    profiles = document.get("profiles")
    if not isinstance(profiles, list) or not profiles:
        raise SpeedscopeValidationError("profiles must be a non-empty list")
    active = document.get("activeProfileIndex", 0)
    if not isinstance(active, int) or not 0 <= active < len(profiles):
        raise SpeedscopeValidationError(f"activeProfileIndex {active!r} out of range")
    for index, profile in enumerate(profiles):
        where = f"profiles[{index}]"
        if not isinstance(profile, dict) or not isinstance(profile.get("name"), str):
            raise SpeedscopeValidationError(f"{where}: needs a name")
        if profile.get("unit") not in UNITS:
            raise SpeedscopeValidationError(f"{where}: unit {profile.get('unit')!r} not one of {sorted(UNITS)}")
        start = _number(profile.get("startValue"), f"{where}.startValue")
        end = _number(profile.get("endValue"), f"{where}.endValue")
        if end < start:
            raise SpeedscopeValidationError(f"{where}: endValue {end} < startValue {start}")
        if profile.get("type") == "sampled":
            _check_sampled(profile, len(frames), where)
        elif profile.get("type") == "evented":
            _check_evented(profile, len(frames), start, end, where)
        else:
            raise SpeedscopeValidationError(f"{where}: type {profile.get('type')!r} is neither sampled nor evented")


def _check_frame_index(frame: Any, frame_count: int, where: str) -> None:
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < frame_count:
        raise SpeedscopeValidationError(f"{where}: frame index {frame!r} outside shared.frames[0..{frame_count})")


def _check_sampled(profile: dict[str, Any], frame_count: int, where: str) -> None:
    samples, weights = profile.get("samples"), profile.get("weights")
    if not isinstance(samples, list) or not isinstance(weights, list):
        raise SpeedscopeValidationError(f"{where}: samples and weights must be lists")
    if len(samples) != len(weights):
        raise SpeedscopeValidationError(f"{where}: {len(weights)} weights for {len(samples)} samples")
    total = 0.0
    for sample_index, (stack, weight) in enumerate(zip(samples, weights, strict=True)):
        if not isinstance(stack, list) or not stack:
            raise SpeedscopeValidationError(f"{where}.samples[{sample_index}]: empty stack")
        for frame in stack:
            _check_frame_index(frame, frame_count, f"{where}.samples[{sample_index}]")
        value = _number(weight, f"{where}.weights[{sample_index}]")
        if value < 0:
            raise SpeedscopeValidationError(f"{where}.weights[{sample_index}]: negative weight")
        total += value
    span = profile["endValue"] - profile["startValue"]
    if not math.isclose(span, total, rel_tol=1e-9, abs_tol=1e-6):
        raise SpeedscopeValidationError(f"{where}: endValue - startValue = {span} but weights sum to {total}")


def _check_evented(profile: dict[str, Any], frame_count: int, start: float, end: float, where: str) -> None:
    events = profile.get("events")
    if not isinstance(events, list):
        raise SpeedscopeValidationError(f"{where}: events must be a list")
    if not _evented_looks_valid(events, frame_count, start, end):
        # Something is wrong: the record-by-record walk finds the first problem and names it.
        _check_evented_records(events, frame_count, start, end, where)


def _evented_looks_valid(events: list[Any], frame_count: int, start: float, end: float) -> bool:
    """Every invariant of _check_evented_records, checked on whole columns (a timeline has ~10^5 records).

    True only when the walk would accept the list; False sends the list to the walk for the error message.
    Types are checked exactly (``type(x) is int``): a subclass such as bool is left to the walk to judge.
    """
    if not events:
        return True
    if set(map(type, events)) != {dict}:
        return False
    kinds = list(map(dict.get, events, repeat("type")))
    frames = list(map(dict.get, events, repeat("frame")))
    times = list(map(dict.get, events, repeat("at")))
    if set(map(type, kinds)) != {str} or set(kinds) - {"O", "C"} or set(map(type, frames)) != {int} \
            or not set(map(type, times)) <= {int, float}:
        return False
    try:
        frame_array = np.array(frames, dtype=np.int64)
        at = np.array(times, dtype=np.float64)
    except OverflowError:
        return False
    if frame_array.min() < 0 or frame_array.max() >= frame_count or not np.isfinite(at).all():
        return False
    if at[0] < start or (np.diff(at) < 0).any() or at.max() > end:
        return False
    opens = np.frombuffer("".join(kinds).encode("ascii"), dtype=np.uint8) == ord("O")
    depth = np.cumsum(np.where(opens, 1, -1))
    if depth.min() < 0 or depth[-1] != 0:
        return False
    # Balanced and never below zero: at each depth, opens and closes alternate, and each open is closed by the
    # next record at its depth. Ordering the records by depth (stably) puts every pair side by side.
    level = np.where(opens, depth, depth + 1)
    paired = frame_array[np.argsort(level, kind="stable")]
    return bool(np.array_equal(paired[0::2], paired[1::2]))


def _check_evented_records(events: list[Any], frame_count: int, start: float, end: float, where: str) -> None:
    open_frames: list[int] = []
    previous = start
    for index, event in enumerate(events):
        here = f"{where}.events[{index}]"
        if not isinstance(event, dict):
            raise SpeedscopeValidationError(f"{here}: not an object")
        _check_frame_index(event.get("frame"), frame_count, here)
        at = _number(event.get("at"), f"{here}.at")
        if at < previous:
            raise SpeedscopeValidationError(f"{here}: at {at} is before the previous event ({previous})")
        if at > end:
            raise SpeedscopeValidationError(f"{here}: at {at} is after endValue {end}")
        previous = at
        if event.get("type") == "O":
            open_frames.append(event["frame"])
        elif event.get("type") == "C":
            if not open_frames or open_frames[-1] != event["frame"]:
                expected = open_frames[-1] if open_frames else "nothing open"
                raise SpeedscopeValidationError(f"{here}: closes frame {event['frame']}, expected {expected}")
            open_frames.pop()
        else:
            raise SpeedscopeValidationError(f"{here}: type {event.get('type')!r} is neither O nor C")
    if open_frames:
        raise SpeedscopeValidationError(f"{where}: {len(open_frames)} event(s) never closed")
