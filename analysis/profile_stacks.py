"""Root-first flamegraph stacks for the rows of a Trace.

A stack captured at the entry of an allocator function (sysmalloc, say) already holds the allocator's own
frames: sysmalloc <- _int_malloc <- malloc <- application frames <- main. The traced call chain of the row
(``path`` plus ``function``) may go deeper than the captured stack: a syscall carries its enclosing call's
stack, an inlined function (grow_heap) has no frame of its own. Those missing links are appended as synthetic
leaf frames, so the leaf of every flamegraph stack is the function the row measures.
Rows without a stack (in-kernel aggregates, stack capture failed) hang their call chain under ``[no stack]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from arena_trace.analysis.stacks import UNKNOWN, frame_label
from arena_trace.probes.event_layout import unpack_path
from arena_trace.tracer.trace_format import Trace

NO_STACK = "[no stack]"
# GCC clone suffixes and glibc's public-name prefix: "systrim.constprop.0" and "__libc_malloc" are the
# symbols of the catalog functions "systrim" and "malloc".
_CLONE_SUFFIX = re.compile(r"\.(constprop|part|isra|cold|lto_priv)\.\d+.*$")
_SYMBOL_PREFIXES = ("__libc_", "__GI_", "__")


@dataclass(frozen=True)
class Frame:
    """One flamegraph frame; ``file``/``line`` come from debug info, ``module``/``build_id`` from the map."""

    name: str
    file: str | None = None
    line: int | None = None
    module: str | None = None
    build_id: str | None = None
    module_offset: int | None = None

    @property
    def synthetic(self) -> bool:
        return self.module is None


def normalized_symbol(name: str) -> str:
    name = _CLONE_SUFFIX.sub("", name)
    for prefix in _SYMBOL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text or None


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class StackBuilder:
    """Builds (and caches) root-first frame tuples for (stack id, path, function) combinations."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.function_names = trace.function_names()
        self._cache: dict[tuple[int, int, int], tuple[Frame, ...]] = {}

    @cached_property
    def frames_by_id(self) -> dict[int, Frame]:
        frames = {}
        for record in self.trace.frames.to_dict("records"):
            # pandas turns missing values into NaN, which frame_label would print as the symbol "nan".
            row = {key: (None if isinstance(value, float) and math.isnan(value) else value)
                   for key, value in record.items()}
            line = _optional_int(row.get("line"))
            frames[int(row["frame_id"])] = Frame(
                name=frame_label(row),
                file=_optional_text(row.get("file")),
                line=line if line and line > 0 else None,
                module=_optional_text(row.get("module")) or "[unknown module]",
                build_id=_optional_text(row.get("build_id")),
                module_offset=_optional_int(row.get("module_offset")),
            )
        return frames

    @cached_property
    def stack_frame_ids(self) -> dict[int, tuple[int, ...]]:
        """stack id -> frame ids, innermost first (as stored)."""
        return {
            int(row["stack_id"]): tuple(int(frame) for frame in (row["frame_ids"] if row["frame_ids"] is not None
                                                                  else ()))
            for row in self.trace.stacks.to_dict("records")
        }

    def function_name(self, function_id: int) -> str:
        return self.function_names.get(int(function_id), f"[function {int(function_id)}]")

    def call_chain(self, path: int, function_id: int) -> list[str]:
        """Names of the traced calls enclosing the row, outermost first, ending with the row's function."""
        return [self.function_name(ancestor) for ancestor in unpack_path(int(path))] + [self.function_name(function_id)]

    def stack(self, stack_id: int, path: int, function_id: int) -> tuple[Frame, ...]:
        key = (int(stack_id), int(path), int(function_id))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._build(*key)
            self._cache[key] = cached
        return cached

    def has_stack(self, stack_id: int) -> bool:
        return bool(self.stack_frame_ids.get(int(stack_id)))

    def _build(self, stack_id: int, path: int, function_id: int) -> tuple[Frame, ...]:
        chain = self.call_chain(path, function_id)
        frame_ids = self.stack_frame_ids.get(stack_id, ()) if stack_id >= 0 else ()
        if not frame_ids:
            return (Frame(NO_STACK), *(Frame(name) for name in chain))
        root_first = [self.frames_by_id.get(frame_id, Frame(UNKNOWN, module="[unknown module]"))
                      for frame_id in reversed(frame_ids)]
        missing = chain[_first_missing_link(root_first, chain):]
        return (*root_first, *(Frame(name) for name in missing))


def _first_missing_link(root_first: list[Frame], chain: list[str]) -> int:
    """Index of the first call-chain entry that the captured stack does not already show.

    The innermost stack frame that names a chain entry anchors the chain; entries after it are missing.
    When no frame names any entry (stripped library, truncated stack) the whole chain is missing.
    """
    normalized_chain = [normalized_symbol(name) for name in chain]
    for frame in reversed(root_first):
        symbol = normalized_symbol(frame.name)
        for index in range(len(chain) - 1, -1, -1):
            if normalized_chain[index] == symbol:
                return index + 1
    return 0
