"""Turning stack ids of a Trace into readable frames (no binaries needed: names were stored at record time)."""

from __future__ import annotations

from functools import cached_property

import pandas as pd
from arena_trace.tracer.trace_format import Trace

UNKNOWN = "[unknown]"


def frame_label(frame: pd.Series | dict) -> str:
    symbol = frame.get("symbol")
    if symbol:
        return str(symbol)
    module = str(frame.get("module") or "")
    offset = frame.get("module_offset")
    basename = module.rsplit("/", 1)[-1] if module else UNKNOWN
    return f"{basename}+{int(offset):#x}" if offset is not None and module else UNKNOWN


class StackTable:
    """Cached lookups from stack id to frame labels, innermost first as stored."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    @cached_property
    def labels(self) -> dict[int, str]:
        return {int(row["frame_id"]): frame_label(row) for row in self.trace.frames.to_dict("records")}

    @cached_property
    def locations(self) -> dict[int, tuple[str, int | None]]:
        """frame id -> (file, line) where debug info had it."""
        result = {}
        for row in self.trace.frames.to_dict("records"):
            if row.get("file"):
                result[int(row["frame_id"])] = (str(row["file"]), row.get("line"))
        return result

    @cached_property
    def stacks(self) -> dict[int, tuple[tuple[int, ...], str]]:
        return {
            int(row["stack_id"]): (tuple(int(frame) for frame in row["frame_ids"]), str(row["status"]))
            for row in self.trace.stacks.to_dict("records")
        }

    def frame_ids(self, stack_id: int) -> tuple[int, ...]:
        return self.stacks.get(int(stack_id), ((), "missing"))[0]

    def status(self, stack_id: int) -> str:
        return self.stacks.get(int(stack_id), ((), "missing"))[1]

    def innermost_first(self, stack_id: int) -> list[str]:
        return [self.labels.get(frame, UNKNOWN) for frame in self.frame_ids(stack_id)]

    def root_first(self, stack_id: int) -> list[str]:
        return list(reversed(self.innermost_first(stack_id)))
