"""Symbol tables for one module: names to addresses for attaching probes, addresses to names for reports.

Symbols come from the separate debug file's .symtab (which keeps the LOCAL functions malloc is made of:
_int_malloc, sysmalloc, arena_get2, main_arena...) merged with the binary's own .symtab/.dynsym. All
addresses are ELF virtual addresses of the binary; runtime address = module load base + address.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo

from .elf_file import (
    DEFAULT_DEBUG_DIRECTORY,
    DebugFileLookup,
    ElfError,
    ElfFile,
    find_debug_file,
    open_elf,
)

# GCC's IPA clones keep the base name and add a suffix; .cold is a split-off fragment, not an entry.
CLONE_SUFFIX = r"(?:\.(?:constprop|part|isra|lto_priv)\.\d+)+"

_BINDINGS = {0: "local", 1: "global", 2: "weak", 10: "unique"}
_KINDS = {0: "notype", 1: "object", 2: "function", 6: "tls", 10: "function"}  # 10 = STT_GNU_IFUNC
_SKIPPED_TYPES = {3, 4}  # STT_SECTION, STT_FILE
_SHN_UNDEF = 0
_SHN_LORESERVE = 0xFF00
# Lower is preferred when several names share an address (e.g. malloc / __libc_malloc / __GI___libc_malloc).
_BINDING_RANK = {"global": 0, "unique": 0, "weak": 1, "local": 2}

_SYMBOL_64 = [("name", "u4"), ("info", "u1"), ("other", "u1"), ("section_index", "u2"),
              ("value", "u8"), ("size", "u8")]
_SYMBOL_32 = [("name", "u4"), ("value", "u4"), ("size", "u4"), ("info", "u1"), ("other", "u1"),
              ("section_index", "u2")]


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # function | object | tls | notype
    binding: str  # global | weak | local | unique
    section: str
    source: str  # debug-symtab | symtab | dynsym

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def base_name(self) -> str:
        return re.sub(CLONE_SUFFIX + "$", "", self.name)


@dataclass(frozen=True)
class InlinedEntry:
    """One inlined copy of a function, found in DWARF."""

    name: str
    entry_address: int
    ranges: tuple[tuple[int, int], ...]
    call_line: int | None


def _read_symbol_section(elf: ElfFile, section_name: str, source: str) -> list[Symbol]:
    if not elf.has_section(section_name):
        return []
    data = elf.section_data(section_name)
    strings = elf.section_link_data(section_name)
    layout = _SYMBOL_64 if elf.is_64_bit else _SYMBOL_32
    byte_order = "<" if elf.little_endian else ">"
    dtype = np.dtype([(name, byte_order + code) for name, code in layout])
    count = len(data) // dtype.itemsize
    table = np.frombuffer(data, dtype=dtype, count=count)
    section_names = elf.section_index_names()
    symbols = []
    for entry in table:
        symbol_type = int(entry["info"]) & 0xF
        section_index = int(entry["section_index"])
        name_offset = int(entry["name"])
        if symbol_type in _SKIPPED_TYPES or section_index == _SHN_UNDEF or name_offset >= len(strings):
            continue
        end = strings.find(b"\0", name_offset)
        name = strings[name_offset:end if end >= 0 else len(strings)].decode("utf-8", errors="replace")
        if not name:
            continue
        section = section_names[section_index] if section_index < min(len(section_names), _SHN_LORESERVE) else ""
        symbols.append(Symbol(
            name=name,
            address=int(entry["value"]),
            size=int(entry["size"]),
            kind=_KINDS.get(symbol_type, "notype"),
            binding=_BINDINGS.get(int(entry["info"]) >> 4, "local"),
            section=section,
            source=source,
        ))
    return symbols


def _display_rank(symbol: Symbol) -> tuple[int, int, int, int, str]:
    leading_underscores = len(symbol.name) - len(symbol.name.lstrip("_"))
    return (_BINDING_RANK.get(symbol.binding, 3), 0 if symbol.kind != "notype" else 1,
            leading_underscores, len(symbol.name), symbol.name)


def debug_package_hint(target_path: str) -> str:
    """What to install so the debug symbols appear, as specific as we can tell without a package manager."""
    basename = os.path.basename(target_path)
    if re.match(r"^(libc\.so\.6|libc-2\.\d+\.so|ld-linux.*\.so.*|libm\.so\.6|libpthread\.so\.0)$", basename):
        if os.path.exists("/etc/debian_version"):
            return "apt-get install libc6-dbg"
        if os.path.exists("/etc/fedora-release") or os.path.exists("/etc/redhat-release"):
            return "dnf debuginfo-install glibc"
        return "install the debug symbols of glibc (e.g. libc6-dbg or glibc-debuginfo)"
    if os.path.exists("/etc/debian_version"):
        return (f"install the -dbgsym package of the package that owns {target_path} "
                f"(dpkg -S {target_path}), from the debian-debug archive")
    return f"install the debug-info package for {target_path}, or pass --debug-dir"


@dataclass
class SymbolTable:
    binary_path: str
    target_path: str
    build_id: str | None
    debug_lookup: DebugFileLookup
    symbols: list[Symbol]
    missing_debug_hint: str | None = None
    _by_name: dict[str, list[Symbol]] = field(default_factory=dict, repr=False)
    _starts: list[int] = field(default_factory=list, repr=False)
    _sorted: list[Symbol] = field(default_factory=list, repr=False)
    _dwarf_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _inlined_cache: dict[tuple[str, str], list[InlinedEntry]] = field(default_factory=dict, repr=False)
    _line_tables: LineTables | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            self._by_name.setdefault(symbol.name, []).append(symbol)
        best_at: dict[int, Symbol] = {}
        for symbol in self.symbols:
            if symbol.kind == "tls":
                continue  # a TLS symbol's value is an offset in the TLS block, not an address
            current = best_at.get(symbol.address)
            if current is None or _display_rank(symbol) < _display_rank(current):
                # Keep the largest size seen at an address so an aliased size-0 label does not shadow it.
                size = max(symbol.size, current.size if current else 0)
                best_at[symbol.address] = Symbol(**{**symbol.__dict__, "size": size})
            elif symbol.size > current.size:
                best_at[symbol.address] = Symbol(**{**current.__dict__, "size": symbol.size})
        self._sorted = [best_at[address] for address in sorted(best_at)]
        self._starts = [symbol.address for symbol in self._sorted]

    @property
    def has_debug_symbols(self) -> bool:
        return self.debug_lookup.found

    def lookup_all(self, name: str, match_clones: bool = True) -> list[Symbol]:
        """Every symbol called `name`, or (match_clones) `name.constprop.N`/`.part.N`/`.isra.N`."""
        exact = self._by_name.get(name, [])
        if exact or not match_clones:
            return _unique_by_address(exact)
        pattern = re.compile(re.escape(name) + CLONE_SUFFIX + "$")
        clones = [symbol for candidate, symbols in self._by_name.items() if pattern.match(candidate)
                  for symbol in symbols]
        return sorted(_unique_by_address(clones), key=lambda symbol: (symbol.name.count("."), symbol.name))

    def lookup(self, names: str | Sequence[str], match_clones: bool = True) -> Symbol | None:
        """First candidate name that resolves; exact names win over clone-suffixed ones."""
        candidates = [names] if isinstance(names, str) else list(names)
        for name in candidates:
            found = self.lookup_all(name, match_clones=False)
            if found:
                return _preferred(found)
        if match_clones:
            for name in candidates:
                found = self.lookup_all(name, match_clones=True)
                if found:
                    return found[0]
        return None

    def symbol_for_address(self, address: int) -> Symbol | None:
        index = bisect.bisect_right(self._starts, address) - 1
        # Walk back a little: a symbol may sit inside a larger one (e.g. a label in an asm function).
        for candidate_index in range(index, max(index - 8, -1), -1):
            symbol = self._sorted[candidate_index]
            if symbol.size and symbol.address <= address < symbol.end:
                return symbol
            if symbol.size == 0 and candidate_index == index:
                next_start = self._starts[index + 1] if index + 1 < len(self._starts) else None
                if symbol.address == address or (next_start is not None and address < next_start
                                                  and symbol.kind in ("function", "notype")):
                    return symbol
        return None

    def symbolize(self, address: int) -> tuple[str, int] | None:
        """(name, offset into it) for an ELF virtual address, or None when no symbol covers it."""
        symbol = self.symbol_for_address(address)
        if symbol is None:
            return None
        return symbol.name, address - symbol.address

    def functions(self) -> list[Symbol]:
        return [symbol for symbol in self._sorted if symbol.kind == "function"]

    def inlined_entries(self, inlined_name: str, within: str) -> list[InlinedEntry]:
        """Entry points of inlined copies of `inlined_name` inside the function `within` (DWARF).

        Only the compile unit that contains `within` is walked, found through .debug_aranges,
        because libc's full DWARF takes far too long to parse with pyelftools.
        """
        key = (inlined_name, within)
        with self._dwarf_lock:
            if key not in self._inlined_cache:
                self._inlined_cache[key] = self._find_inlined(inlined_name, within)
            return self._inlined_cache[key]

    def source_line(self, address: int) -> tuple[str, int] | None:
        """(file, line) for an address from .debug_line, reading only the CU that covers it."""
        if not self.debug_lookup.path:
            return None
        with self._dwarf_lock:
            if self._line_tables is None:
                self._line_tables = LineTables(self.debug_lookup.path)
            return self._line_tables.lookup(address)

    def _find_inlined(self, inlined_name: str, within: str) -> list[InlinedEntry]:
        container = self.lookup(within)
        if container is None or not self.debug_lookup.path:
            return []
        return find_inlined_entries(self.debug_lookup.path, inlined_name, container.address, container.end)


def _die_name(die: DIE) -> str | None:
    """Name of a DIE, following abstract_origin/specification the way inlined copies refer to it."""
    for _ in range(4):  # the chain is at most a couple of links; bound it against corrupt DWARF
        name = die.attributes.get("DW_AT_name")
        if name is not None:
            return name.value.decode("utf-8", errors="replace")
        for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if link in die.attributes:
                die = die.get_DIE_from_attribute(link)
                break
        else:
            return None
    return None


def _die_ranges(dwarf: DWARFInfo, unit: CompileUnit, die: DIE) -> list[tuple[int, int]]:
    attributes = die.attributes
    if "DW_AT_low_pc" in attributes:
        low = attributes["DW_AT_low_pc"].value
        high = attributes.get("DW_AT_high_pc")
        if high is None:
            return [(low, low + 1)]
        # DWARF 4+: a constant-class high_pc is a length, an address-class one is absolute.
        return [(low, high.value if high.form == "DW_FORM_addr" else low + high.value)]
    if "DW_AT_ranges" not in attributes:
        return []
    unit_base = unit.get_top_DIE().attributes.get("DW_AT_low_pc")
    base = unit_base.value if unit_base is not None else 0
    range_lists = dwarf.range_lists()
    if range_lists is None:
        return []
    ranges = []
    for entry in range_lists.get_range_list_at_offset(attributes["DW_AT_ranges"].value, cu=unit):
        if hasattr(entry, "base_address"):
            base = entry.base_address
        elif hasattr(entry, "begin_offset"):
            offset = 0 if getattr(entry, "is_absolute", False) else base
            ranges.append((entry.begin_offset + offset, entry.end_offset + offset))
    return ranges


def find_inlined_entries(debug_path: str, inlined_name: str, start: int, end: int) -> list[InlinedEntry]:
    """Inlined copies of `inlined_name` whose entry lies in [start, end), from the CU covering `start`."""
    entries = []
    with open_elf(debug_path) as debug:
        try:
            dwarf = debug.pyelftools.get_dwarf_info()
            aranges = dwarf.get_aranges()
            unit_offset = aranges.cu_offset_at_addr(start) if aranges is not None else None
            if unit_offset is None:
                return []
            unit = dwarf.get_CU_at(unit_offset)
            for die in unit.iter_DIEs():
                if die.tag != "DW_TAG_inlined_subroutine" or _die_name(die) != inlined_name:
                    continue
                ranges = _die_ranges(dwarf, unit, die)
                entry_pc = die.attributes.get("DW_AT_entry_pc")
                if entry_pc is not None and entry_pc.form == "DW_FORM_addr":
                    entry = entry_pc.value
                elif entry_pc is not None and ranges:
                    entry = min(low for low, _ in ranges) + entry_pc.value  # DWARF 5 offset form
                elif ranges:
                    entry = min(low for low, _ in ranges)
                else:
                    continue
                if start <= entry < end:
                    call_line = die.attributes.get("DW_AT_call_line")
                    entries.append(InlinedEntry(inlined_name, entry, tuple(sorted(ranges)),
                                                call_line.value if call_line is not None else None))
        except ElfError:
            raise
        except Exception as error:  # pyelftools fails in many ways on unusual DWARF
            raise ElfError(f"{debug_path}: cannot read DWARF: {type(error).__name__}: {error}") from error
    return sorted(entries, key=lambda entry: entry.entry_address)


class LineTables:
    """Address -> (file, line) from .debug_line, decoded one compile unit at a time on first use."""

    def __init__(self, debug_path: str) -> None:
        self._debug_path = debug_path
        self._by_unit: dict[int, tuple[list[int], list[tuple[str, int] | None]]] = {}
        self._debug: ElfFile | None = None
        self._dwarf: DWARFInfo | None = None

    def close(self) -> None:
        if self._debug is not None:
            self._debug.close()
            self._debug = self._dwarf = None

    def lookup(self, address: int) -> tuple[str, int] | None:
        try:
            if self._dwarf is None:
                # Kept open: parsing the DWARF section headers again for every address is the slow part.
                self._debug = open_elf(self._debug_path)
                self._dwarf = self._debug.pyelftools.get_dwarf_info()
            aranges = self._dwarf.get_aranges()
            unit_offset = aranges.cu_offset_at_addr(address) if aranges is not None else None
            if unit_offset is None:
                return None
            if unit_offset not in self._by_unit:
                self._by_unit[unit_offset] = _decode_line_table(self._dwarf, self._dwarf.get_CU_at(unit_offset))
        except ElfError:
            raise
        except Exception as error:  # pyelftools fails in many ways on unusual DWARF
            raise ElfError(f"{self._debug_path}: cannot read line table: {error}") from error
        addresses, rows = self._by_unit[unit_offset]
        index = bisect.bisect_right(addresses, address) - 1
        return rows[index] if index >= 0 else None


def _decode_line_table(dwarf: DWARFInfo, unit: CompileUnit) -> tuple[list[int], list[tuple[str, int] | None]]:
    program = dwarf.line_program_for_CU(unit)
    if program is None:
        return [], []
    header = program.header
    files = header.file_entry
    directories = header.include_directory
    # DWARF 5 numbers files from 0; earlier versions from 1.
    first_file = 0 if header.version >= 5 else 1

    def file_name(index: int) -> str:
        if not 0 <= index - first_file < len(files):
            return "?"
        entry = files[index - first_file]
        name = entry.name.decode("utf-8", errors="replace")
        directory_index = entry.dir_index - (0 if header.version >= 5 else 1)
        if 0 <= directory_index < len(directories) and not name.startswith("/"):
            return os.path.normpath(os.path.join(directories[directory_index].decode("utf-8", "replace"), name))
        return name

    rows: list[tuple[int, tuple[str, int] | None]] = []
    for entry in program.get_entries():
        state = entry.state
        if state is None:
            continue
        # An end_sequence row marks where covered code stops; map what follows to nothing.
        rows.append((state.address, None if state.end_sequence else (file_name(state.file), state.line)))
    rows.sort(key=lambda row: row[0])
    return [address for address, _ in rows], [row for _, row in rows]


def _unique_by_address(symbols: Iterable[Symbol]) -> list[Symbol]:
    seen: dict[tuple[str, int], Symbol] = {}
    for symbol in symbols:
        key = (symbol.name, symbol.address)
        # The debug file knows sections and sizes best; keep its copy.
        if key not in seen or (symbol.source == "debug-symtab" and seen[key].source != "debug-symtab"):
            seen[key] = symbol
    return list(seen.values())


def _preferred(symbols: list[Symbol]) -> Symbol:
    return min(symbols, key=lambda symbol: (_display_rank(symbol), symbol.source != "debug-symtab"))


def build_symbol_table(binary_path: str, target_path: str | None = None, root_prefix: str = "",
                       debug_directories: Iterable[str] = (),
                       default_debug_directory: str = DEFAULT_DEBUG_DIRECTORY) -> SymbolTable:
    target_path = target_path or binary_path
    with open_elf(binary_path) as binary:
        lookup = find_debug_file(binary, target_path=target_path, root_prefix=root_prefix,
                                 debug_directories=debug_directories,
                                 default_debug_directory=default_debug_directory)
        symbols = _read_symbol_section(binary, ".symtab", "symtab")
        symbols += _read_symbol_section(binary, ".dynsym", "dynsym")
        build_id = binary.build_id
    if lookup.path:
        try:
            with open_elf(lookup.path) as debug:
                symbols = _read_symbol_section(debug, ".symtab", "debug-symtab") + symbols
        except ElfError as error:
            lookup = DebugFileLookup(None, None, lookup.tried, (*lookup.problems, str(error)))
    hint = None if lookup.found else debug_package_hint(target_path)
    return SymbolTable(binary_path=binary_path, target_path=target_path, build_id=build_id,
                       debug_lookup=lookup, symbols=symbols, missing_debug_hint=hint)


class SymbolCache:
    """Symbol tables keyed by build-id, like perf's build-id cache (in memory for now).

    Keying by build-id means the same libc seen through many processes or container roots is read
    once; an on-disk cache would store the same key -> symbols mapping.
    """

    def __init__(self) -> None:
        self._tables: dict[str, SymbolTable] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key_for(binary_path: str) -> str:
        try:
            with open_elf(binary_path) as binary:
                build_id = binary.build_id
        except ElfError:
            build_id = None
        if build_id:
            return "build-id:" + build_id
        status = os.stat(binary_path)
        return f"file:{os.path.realpath(binary_path)}:{status.st_size}:{status.st_mtime_ns}"

    def get(self, binary_path: str, target_path: str | None = None, root_prefix: str = "",
            debug_directories: Iterable[str] = ()) -> SymbolTable:
        key = self.key_for(binary_path)
        with self._lock:
            table = self._tables.get(key)
        if table is None:
            table = build_symbol_table(binary_path, target_path, root_prefix, tuple(debug_directories))
            with self._lock:
                table = self._tables.setdefault(key, table)
        return table

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()


DEFAULT_CACHE = SymbolCache()


def load_symbol_table(binary_path: str, target_path: str | None = None, root_prefix: str = "",
                      debug_directories: Iterable[str] = ()) -> SymbolTable:
    return DEFAULT_CACHE.get(binary_path, target_path, root_prefix, debug_directories)
