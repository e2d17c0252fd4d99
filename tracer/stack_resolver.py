"""Turn stack snapshots into frame and stack ids while the target is alive.

Maps are read at attach time and re-read when a pc falls outside every known module (a library loaded
later); once the target exits the last maps and the symbol tables already loaded stay usable, so nothing
recorded turns into ``[unknown]``. Frames are keyed by (module, build-id, offset), stacks by their frames.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
from arena_trace.probes.event_layout import SNAPSHOT_SHADOW_DEPTH, STACK_HEADER_SIZE, stack_header_dtype
from arena_trace.tracer import process_maps
from arena_trace.tracer.elf_file import ElfError, open_elf
from arena_trace.tracer.symbols import SymbolTable, load_symbol_table
from arena_trace.tracer.unwind import StackSnapshot, Unwinder, UnwindModule

_HEADER = stack_header_dtype()
MAPS_REFRESH_SECONDS = 0.5  # periodic refresh
UNKNOWN_PC_REFRESH_SECONDS = 0.005  # a pc outside every module: a library (or a whole exec) appeared
REGISTERS = ("rip", "rsp", "rbp", "rbx", "r12", "r13", "r14", "r15")


@dataclass
class _Module:
    path: str
    host_path: str
    start: int
    end: int
    load_bias: int
    build_id: str | None
    symbols: SymbolTable | None = None
    symbols_failed: bool = False


class StackResolver:
    def __init__(self, pid: int, debug_directories: tuple[str, ...] = ()) -> None:
        self.pid = pid
        self.debug_directories = debug_directories
        self._modules: list[_Module] = []
        self._starts: list[int] = []
        self._unwinder: Unwinder | None = None
        self._last_refresh = 0.0
        self._frame_ids: dict[tuple[str, int], int] = {}
        self._stack_ids: dict[tuple[tuple[int, ...], str], int] = {}
        self.new_frames: list[tuple] = []
        self.new_stacks: list[tuple] = []
        self.maps_snapshot: list[dict] = []
        self.stacks_captured = 0
        self.stacks_truncated = 0
        self.unresolved_frames = 0
        self._descriptors: list[int] = []
        self._lock = threading.RLock()
        self.refresh_maps(force=True)

    def close(self) -> None:
        for descriptor in self._descriptors:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._descriptors = []

    # --- modules -------------------------------------------------------------------------------
    def refresh_maps(self, force: bool = False, minimum_age: float = MAPS_REFRESH_SECONDS) -> bool:
        # Called from the collector and from run mode's exit holder thread.
        with self._lock:
            return self._refresh_maps(force, minimum_age)

    def _refresh_maps(self, force: bool, minimum_age: float) -> bool:
        now = time.monotonic()
        if not force and now - self._last_refresh < minimum_age:
            return False
        self._last_refresh = now
        try:
            modules = process_maps.modules(self.pid)
        except (process_maps.ProcessGone, OSError):
            return False  # the target exited: keep what we had
        known = {module.path: module for module in self._modules}
        fresh = []
        for module in modules:
            executable = [mapping for mapping in module.mappings if mapping.is_executable]
            if not executable:
                continue
            previous = known.get(module.path)
            if previous and previous.start == module.start:
                fresh.append(previous)
                continue
            fresh.append(self._describe(module))
        fresh.sort(key=lambda module: module.start)
        self._modules = fresh
        self._starts = [module.start for module in fresh]
        self._unwinder = Unwinder([
            UnwindModule(path=module.host_path, start=module.start, end=module.end, load_bias=module.load_bias,
                         build_id=module.build_id, debug_path=None)
            for module in fresh
        ])
        self.maps_snapshot = [
            {"path": module.path, "start": module.start, "end": module.end, "load_bias": module.load_bias,
             "build_id": module.build_id}
            for module in fresh
        ]
        return True

    def _describe(self, module: process_maps.Module) -> _Module:
        build_id = None
        bias = module.load_base
        # Hold the file open and read it through /proc/self/fd: the target may exit (its /proc/PID/root
        # goes away) or its executable may be deleted before its stacks are symbolized.
        try:
            descriptor = os.open(module.host_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return _Module(module.path, module.host_path, module.start, module.end, bias, None, symbols_failed=True)
        self._descriptors.append(descriptor)
        pinned = f"/proc/self/fd/{descriptor}"
        try:
            with open_elf(pinned) as binary:
                build_id = binary.build_id
                if binary.elf_type != "ET_DYN":
                    bias = 0
        except (ElfError, OSError):
            pass
        return _Module(module.path, pinned, module.start, module.end, bias, build_id)

    def _module_for(self, address: int) -> _Module | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and self._modules[index].start <= address < self._modules[index].end:
            return self._modules[index]
        return None

    def _symbols(self, module: _Module) -> SymbolTable | None:
        if module.symbols is None and not module.symbols_failed:
            try:
                module.symbols = load_symbol_table(module.host_path, target_path=module.path,
                                                   debug_directories=self.debug_directories)
            except (ElfError, OSError):
                module.symbols_failed = True
        return module.symbols

    # --- frames and stacks ----------------------------------------------------------------------
    def _frame_id(self, pc: int, is_return_address: bool) -> int:
        module = self._module_for(pc)
        if module is None and self.refresh_maps(minimum_age=UNKNOWN_PC_REFRESH_SECONDS):
            module = self._module_for(pc)
        key = ("", pc) if module is None else (module.path, pc - module.load_bias)
        frame_id = self._frame_ids.get(key)
        if frame_id is not None:
            return frame_id
        frame_id = len(self._frame_ids)
        self._frame_ids[key] = frame_id
        symbol_name, symbol_offset = None, None
        if module is not None:
            table = self._symbols(module)
            # A return address points after the call; the call itself belongs to pc - 1.
            lookup = key[1] - 1 if is_return_address else key[1]
            found = table.symbolize(lookup) if table is not None else None
            if found is not None:
                symbol_name, symbol_offset = found[0], found[1] + (1 if is_return_address else 0)
        if symbol_name is None:
            self.unresolved_frames += 1
        self.new_frames.append((frame_id, key[0] or None, module.build_id if module else None, key[1],
                                symbol_name, symbol_offset, None, None))
        return frame_id

    def resolve(self, record: bytes) -> tuple[int, int]:
        """Unwind one snapshot record; returns (call_id, stack_id)."""
        with self._lock:
            return self._resolve(record)

    def _resolve(self, record: bytes) -> tuple[int, int]:
        header = np.frombuffer(record[:STACK_HEADER_SIZE], dtype=_HEADER)[0]
        length = min(int(header["length"]), len(record) - STACK_HEADER_SIZE)
        shadow = {
            int(slot): int(address)
            for slot, address in zip(header["shadow_slot"][:SNAPSHOT_SHADOW_DEPTH],
                                     header["shadow_return"][:SNAPSHOT_SHADOW_DEPTH], strict=True)
            if slot
        }
        snapshot = StackSnapshot(
            registers={name: int(header[name]) for name in REGISTERS},
            stack_base=int(header["rsp"]),
            stack=record[STACK_HEADER_SIZE:STACK_HEADER_SIZE + length],
            return_address_shadow=shadow,
        )
        result = self._unwinder.unwind(snapshot) if self._unwinder else None
        pcs = result.pcs if result else [int(header["rip"])]
        status = result.status if result else "no-module"
        if status == "no-module" and self.refresh_maps(minimum_age=UNKNOWN_PC_REFRESH_SECONDS):
            result = self._unwinder.unwind(snapshot)
            pcs, status = result.pcs, result.status
        frames = tuple(self._frame_id(pc, index > 0) for index, pc in enumerate(pcs))
        self.stacks_captured += 1
        if status != "complete":
            self.stacks_truncated += 1
        key = (frames, status)
        stack_id = self._stack_ids.get(key)
        if stack_id is None:
            stack_id = len(self._stack_ids)
            self._stack_ids[key] = stack_id
            self.new_stacks.append((stack_id, list(frames), status))
        return int(header["call_id"]), stack_id

    def take_new(self) -> tuple[list[tuple], list[tuple]]:
        frames, stacks = self.new_frames, self.new_stacks
        self.new_frames, self.new_stacks = [], []
        return frames, stacks
