"""Decide what to attach to one process: find its allocators, resolve each catalog function by name in the
library and its debug file, choose the cheapest safe probe address, and number the functions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from arena_trace.probes import CATALOGS
from arena_trace.probes.catalog import SYSCALLS, AllocatorCatalog, FunctionSpec, Role, SyscallSpec, Tier
from arena_trace.tracer import process_maps
from arena_trace.tracer.elf_file import ElfError, open_elf
from arena_trace.tracer.placement import Placement, place_symbol
from arena_trace.tracer.symbols import SymbolTable, load_symbol_table

from arena_trace.errors import TargetError


@dataclass
class AllocatorTarget:
    catalog: AllocatorCatalog
    path: str  # as the target sees it
    host_path: str  # openable from here (through /proc/PID/root)
    symbols: SymbolTable
    version: str | None
    load_bias: int | None = None  # runtime address - ELF virtual address; None until the library is mapped
    main_arena_symbol: int | None = None  # ELF virtual address of glibc's main_arena

    @property
    def main_arena(self) -> int:
        if self.load_bias is None or self.main_arena_symbol is None:
            return 0
        return self.load_bias + self.main_arena_symbol

    def locate(self, modules: list[process_maps.Module]) -> bool:
        """Learn the load bias once the library is mapped; True when it is known."""
        if self.load_bias is None:
            module = next((module for module in modules if module.path == self.path), None)
            if module is not None:
                self.load_bias = _load_bias(module)
        return self.load_bias is not None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.catalog.name,
            "path": self.path,
            "build_id": self.symbols.build_id,
            "version": self.version,
            "debug_symbols": self.symbols.has_debug_symbols,
            "debug_file": self.symbols.debug_lookup.path,
            "main_arena": self.main_arena or None,
            "load_bias": self.load_bias,
        }


@dataclass
class PlannedProbe:
    function_id: int
    spec: FunctionSpec
    allocator: AllocatorTarget
    symbol: str | None = None
    placement: Placement | None = None
    error: str | None = None  # why it cannot be attached (not resolved)
    attached: bool = False

    @property
    def probe_address(self) -> int | None:
        """ELF virtual address where the entry and return probes go."""
        if self.placement is None:
            return None
        return self.placement.probe_address if self.placement.uretprobe_ok else self.placement.entry_address

    def describe(self) -> dict[str, Any]:
        placement = self.placement
        address = self.probe_address
        used_placement = placement is not None and placement.uretprobe_ok
        return {
            "function_id": self.function_id,
            "function": self.spec.name,
            "symbol": self.symbol,
            "allocator": self.allocator.catalog.name,
            "library": self.allocator.path,
            "tier": str(self.spec.tier),
            "role": str(self.spec.role),
            "address": address,
            "offset": None if placement is None or address is None else address - placement.entry_address,
            "placement": None if placement is None else (placement.kind if used_placement else "entry"),
            "cost_class": None if placement is None else (placement.cost_class if used_placement else
                                                          _entry_cost(placement)),
            "first_instruction": None if placement is None else placement.first_instruction,
            "misses": placement.misses if used_placement and placement else None,
            "reason": None if placement is None else (placement.reason if used_placement else
                                                      "a uretprobe needs the return address at *rsp: entry"),
            "attached": self.attached,
            "error": self.error,
        }


def _entry_cost(placement: Placement) -> str:
    return placement.cost_class if placement.kind in ("entry", "nop5") else "single-step"


@dataclass
class ProbePlan:
    pid: int
    allocators: list[AllocatorTarget]
    probes: list[PlannedProbe]
    syscalls: list[tuple[int, SyscallSpec]]
    full: bool
    warnings: list[str] = field(default_factory=list)
    stream_full: bool = False  # --full-events: full-tier calls streamed as events, not aggregated

    def function_table(self) -> list[dict[str, Any]]:
        functions = [
            {"id": probe.function_id, "name": probe.spec.name, "kind": "function", "role": str(probe.spec.role),
             "tier": str(probe.spec.tier), "allocator": probe.allocator.catalog.name,
             "mode": "stream" if probe.spec.tier == Tier.SLOW or self.stream_full else "aggregate"}
            for probe in self.probes
        ]
        functions += [
            {"id": function_id, "name": syscall.name, "kind": "syscall", "role": str(Role.SYSCALL),
             "tier": str(Tier.SLOW), "allocator": None}
            for function_id, syscall in self.syscalls
        ]
        return functions

    @property
    def main_arena(self) -> int:
        return next((allocator.main_arena for allocator in self.allocators if allocator.main_arena), 0)

    def locate(self) -> bool:
        """Learn load biases of libraries mapped since the plan was made; True when all are known."""
        if all(allocator.load_bias is not None for allocator in self.allocators):
            return True
        try:
            modules = process_maps.modules(self.pid)
        except (process_maps.ProcessGone, OSError):
            return False
        return all([allocator.locate(modules) for allocator in self.allocators])


_GLIBC_VERSION = re.compile(rb"GNU C Library \(([^)]*)\) (?:stable )?release version (\d+\.\d+)")


def _glibc_version(path: str) -> str | None:
    try:
        with open(path, "rb") as library:
            found = _GLIBC_VERSION.search(library.read())
    except OSError:
        return None
    return f"{found.group(2).decode()} ({found.group(1).decode(errors='replace')})" if found else None


def _load_bias(module: process_maps.Module) -> int:
    try:
        with open_elf(module.host_path) as binary:
            return module.load_base if binary.elf_type == "ET_DYN" else 0
    except ElfError:
        return module.load_base


def _catalog_names(wanted: str) -> list[str]:
    return list(CATALOGS) if wanted == "auto" else [wanted]


def _matches(catalog: AllocatorCatalog, path: str) -> bool:
    basename = path.rsplit("/", 1)[-1]
    return any(re.search(pattern, basename) for pattern in catalog.library_patterns)


def allocator_target(catalog: AllocatorCatalog, path: str, host_path: str,
                     debug_directories: tuple[str, ...] = ()) -> AllocatorTarget:
    try:
        symbols = load_symbol_table(host_path, target_path=path, debug_directories=debug_directories)
    except (ElfError, OSError) as error:
        raise TargetError(f"cannot read the allocator library {path}: {error}") from None
    target = AllocatorTarget(catalog, path, host_path, symbols,
                             _glibc_version(host_path) if catalog.name == "glibc" else None)
    if "main_arena" in catalog.data_symbols:
        symbol = symbols.lookup("main_arena", match_clones=False)
        target.main_arena_symbol = symbol.address if symbol is not None else None
    return target


def _no_allocator(what: str, wanted: str) -> TargetError:
    wanted_text = "glibc malloc or native_alloc" if wanted == "auto" else wanted
    return TargetError(f"{what} has no supported allocator ({wanted_text} not found)")


def detect_allocators(pid: int, wanted: str = "auto", debug_directories: tuple[str, ...] = ()
                      ) -> list[AllocatorTarget]:
    """Allocators of a running process, from /proc/PID/maps (libraries resolved through /proc/PID/root)."""
    try:
        modules = process_maps.modules(pid)
    except process_maps.ProcessGone:
        raise TargetError(f"process {pid} does not exist (or exited)") from None
    except PermissionError:
        # Even root is refused for some processes (another user namespace, a hardened init): say so
        # rather than fail with an internal error.
        raise TargetError(f"cannot read the memory map of process {pid} (/proc/{pid}/maps): "
                          "permission denied") from None
    found = []
    for name in _catalog_names(wanted):
        module = next((module for module in modules if _matches(CATALOGS[name], module.path)), None)
        if module is not None:
            target = allocator_target(CATALOGS[name], module.path, module.host_path, debug_directories)
            target.locate(modules)
            found.append(target)
    if not found:
        raise _no_allocator(f"process {pid}", wanted)
    return found


def allocators_from_libraries(libraries: list[str], wanted: str = "auto", debug_directories: tuple[str, ...] = ()
                              ) -> list[AllocatorTarget]:
    """Allocators of a command that has not started yet, from the libraries the dynamic loader will map."""
    found = []
    for name in _catalog_names(wanted):
        path = next((path for path in libraries if _matches(CATALOGS[name], path)), None)
        if path is not None:
            found.append(allocator_target(CATALOGS[name], path, path, debug_directories))
    if not found:
        raise _no_allocator("the command", wanted)
    return found


def _needed_registers(spec: FunctionSpec) -> list[str]:
    return [argument.register for argument in spec.arguments[:2]]


def plan_probes(pid: int, allocators: list[AllocatorTarget], full: bool = False, stream_full: bool = False
                ) -> ProbePlan:
    probes: list[PlannedProbe] = []
    warnings: list[str] = []
    next_id = 1
    for allocator in allocators:
        specs = allocator.catalog.functions if full else allocator.catalog.tier(Tier.SLOW)
        for spec in specs:
            probe = PlannedProbe(next_id, spec, allocator)
            next_id += 1
            symbol = allocator.symbols.lookup(spec.symbols)
            if symbol is None:
                hint = allocator.symbols.missing_debug_hint
                probe.error = f"symbol {spec.symbols[0]} not found" + (f" (no debug symbols: {hint})" if hint else "")
            else:
                probe.symbol = symbol.name
                try:
                    with open_elf(allocator.host_path) as binary:
                        probe.placement = place_symbol(allocator.symbols, binary, symbol,
                                                       needed_registers=_needed_registers(spec))
                except (ElfError, ValueError) as error:
                    probe.error = f"cannot place a probe on {symbol.name}: {error}"
            probes.append(probe)
        if not allocator.symbols.has_debug_symbols and allocator.catalog.debug_package:
            warnings.append(
                f"{allocator.path}: no debug symbols, internal functions (sysmalloc, arena_get2, ...) "
                f"cannot be traced; install them with: apt-get install {allocator.catalog.debug_package}")
    syscalls = []
    for syscall in SYSCALLS:
        syscalls.append((next_id, syscall))
        next_id += 1
    return ProbePlan(pid, allocators, probes, syscalls, full, warnings, stream_full=full and stream_full)

