"""``--debug-dir``: name frames that were recorded without a symbol, using debug files found by build-id.

A frame's ``module_offset`` is the ELF virtual address inside its module (runtime address minus the
module's load bias), the same address space a debug file's ``.symtab`` uses, so the lookup needs only the
debug file: ``DIR/.build-id/xx/rest.debug``. Only frames whose ``symbol`` is empty are touched.
"""

from __future__ import annotations

import os

from arena_trace.tracer.elf_file import DebugFileLookup, ElfError, build_id_path, open_elf
from arena_trace.tracer.symbols import SymbolTable, _read_symbol_section
from arena_trace.tracer.trace_format import Trace


def _table_for(build_id: str, directories: list[str]) -> SymbolTable | None:
    for directory in directories:
        candidate = build_id_path(directory, build_id)
        if not os.path.isfile(candidate):
            continue
        try:
            with open_elf(candidate) as debug:
                if debug.build_id and debug.build_id != build_id:
                    continue  # a stale or misplaced file must not rename frames
                symbols = _read_symbol_section(debug, ".symtab", "debug-symtab")
        except ElfError:
            continue
        lookup = DebugFileLookup(candidate, "build-id", (candidate,), ())
        return SymbolTable(binary_path=candidate, target_path=candidate, build_id=build_id, debug_lookup=lookup,
                           symbols=symbols)
    return None


def resymbolize(trace: Trace, directories: list[str]) -> int:
    """Fill in missing frame symbols in place; returns how many frames were named."""
    frames = trace.frames
    if frames.empty:
        return 0
    missing = frames["symbol"].fillna("").astype(str).eq("") & frames["build_id"].notna() \
        & frames["module_offset"].notna()
    tables: dict[str, SymbolTable | None] = {}
    named = 0
    symbols = frames["symbol"].astype(object).to_numpy(copy=True)
    offsets = frames["symbol_offset"].astype(object).to_numpy(copy=True)
    for index in missing[missing].index:
        position = frames.index.get_loc(index)
        build_id = str(frames.at[index, "build_id"])
        if build_id not in tables:
            tables[build_id] = _table_for(build_id, directories)
        table = tables[build_id]
        found = table.symbolize(int(frames.at[index, "module_offset"])) if table else None
        if found:
            symbols[position], offsets[position] = found
            named += 1
    frames["symbol"] = symbols
    frames["symbol_offset"] = offsets
    return named
