"""DWARF call frame information (CFI) tables for unwinding x86-64 user stacks.

pyelftools parses the CIE/FDE entry headers (lengths, augmentations, pointer encodings). The CFA
instructions are decoded here instead, because pyelftools 0.33's own table decoder raises on
DW_CFA_GNU_args_size, scales DW_CFA_def_cfa_sf by the wrong factor and has no
DW_CFA_GNU_negative_offset_extended.

Tables are lazy: `.eh_frame_hdr` has a sorted binary-search table of FDE start addresses, so only the FDEs
that an unwind actually touches are parsed and decoded. `.debug_frame` (from the binary or from its
separate debug file) has no such index and is parsed whole on first use, and only for addresses that
`.eh_frame` does not cover.
"""

from __future__ import annotations

import bisect
import io
import struct
import threading
from dataclasses import dataclass
from typing import Any

from arena_trace.tracer.leb128 import Truncated, read_sleb128, read_uleb128
from elftools.dwarf.callframe import CIE, FDE, CallFrameInfo
from elftools.dwarf.structs import DWARFStructs
from elftools.elf.elffile import ELFFile

# DWARF register numbers of the x86-64 psABI.
REGISTER_NUMBERS: dict[str, int] = {
    "rax": 0,
    "rdx": 1,
    "rcx": 2,
    "rbx": 3,
    "rsi": 4,
    "rdi": 5,
    "rbp": 6,
    "rsp": 7,
    "r8": 8,
    "r9": 9,
    "r10": 10,
    "r11": 11,
    "r12": 12,
    "r13": 13,
    "r14": 14,
    "r15": 15,
    "rip": 16,
}
REGISTER_NAMES: dict[int, str] = {number: name for name, number in REGISTER_NUMBERS.items()}
RSP = 7
RIP = 16
REGISTER_COUNT = 17

# Register rule kinds (DWARF 5, section 6.4.1).
RULE_UNDEFINED = 0
RULE_SAME_VALUE = 1
RULE_OFFSET = 2  # saved at CFA + N
RULE_VAL_OFFSET = 3  # value is CFA + N
RULE_REGISTER = 4  # value is in another register
RULE_EXPRESSION = 5  # saved at the address an expression computes
RULE_VAL_EXPRESSION = 6  # value is what an expression computes

RULE_KIND_NAMES = {
    RULE_UNDEFINED: "undefined",
    RULE_SAME_VALUE: "same",
    RULE_OFFSET: "offset",
    RULE_VAL_OFFSET: "val_offset",
    RULE_REGISTER: "register",
    RULE_EXPRESSION: "expression",
    RULE_VAL_EXPRESSION: "val_expression",
}

# Pointer encodings (DW_EH_PE_*) used by .eh_frame and .eh_frame_hdr.
_PE_OMIT = 0xFF
_PE_FORMAT_MASK = 0x0F
_PE_APPLICATION_MASK = 0x70
_PE_PCREL = 0x10
_PE_DATAREL = 0x30
_PE_INDIRECT = 0x80
_PE_FIXED_FORMATS: dict[int, tuple[str, int]] = {
    0x00: ("<Q", 8),  # absptr on a 64-bit target
    0x02: ("<H", 2),
    0x03: ("<I", 4),
    0x04: ("<Q", 8),
    0x0A: ("<h", 2),
    0x0B: ("<i", 4),
    0x0C: ("<q", 8),
}

_ADDRESS_MASK = (1 << 64) - 1


class CfiDecodeError(Exception):
    """An FDE or CIE holds bytes this decoder cannot interpret."""


@dataclass(frozen=True, slots=True)
class CfiRow:
    """The unwind rules that hold from one location of an FDE up to the next row.

    `rules` maps a DWARF register number to (kind, operand). The operand is the offset for
    RULE_OFFSET/RULE_VAL_OFFSET, the source register for RULE_REGISTER and the expression bytes for the
    two expression kinds. Registers without an entry have no rule in this row.
    """

    cfa_register: int  # -1 when the CFA is given by cfa_expression
    cfa_offset: int
    cfa_expression: bytes | None
    rules: dict[int, tuple[int, Any]]
    return_address_register: int
    is_signal_frame: bool
    # Fast path for the overwhelmingly common row: CFA = register + offset, the return address and every
    # saved register at CFA + offset. None when any rule is of another kind.
    saved_offsets: tuple[tuple[int, int], ...] | None
    return_address_offset: int | None
    # No rule or an "undefined" rule for the return address: the outermost frame (_start, clone3 child).
    return_address_undefined: bool


def _make_row(
    cfa_register: int,
    cfa_offset: int,
    cfa_expression: bytes | None,
    rules: dict[int, tuple[int, Any]],
    return_address_register: int,
    is_signal_frame: bool,
) -> CfiRow:
    saved_offsets: tuple[tuple[int, int], ...] | None = None
    return_address_offset: int | None = None
    return_rule = rules.get(return_address_register)
    simple = (
        cfa_expression is None
        and cfa_register >= 0
        and not is_signal_frame
        and return_rule is not None
        and return_rule[0] == RULE_OFFSET
        and all(kind in (RULE_OFFSET, RULE_SAME_VALUE) for kind, _operand in rules.values())
    )
    if simple:
        assert return_rule is not None
        return_address_offset = return_rule[1]
        saved_offsets = tuple(
            (register, operand)
            for register, (kind, operand) in sorted(rules.items())
            if kind == RULE_OFFSET and register != return_address_register
        )
    return CfiRow(
        cfa_register=cfa_register,
        cfa_offset=cfa_offset,
        cfa_expression=cfa_expression,
        rules=dict(rules),
        return_address_register=return_address_register,
        is_signal_frame=is_signal_frame,
        saved_offsets=saved_offsets,
        return_address_offset=return_address_offset,
        return_address_undefined=return_rule is None or return_rule[0] == RULE_UNDEFINED,
    )


@dataclass(frozen=True, slots=True)
class DecodedFde:
    """All rows of one FDE, ready for bisect by address."""

    start: int
    end: int
    locations: list[int]
    rows: list[CfiRow]

    def row_for(self, address: int) -> CfiRow | None:
        if not self.start <= address < self.end:
            return None
        index = bisect.bisect_right(self.locations, address) - 1
        if index < 0:
            return None
        return self.rows[index]


class _ByteReader:
    """Little-endian cursor over CFA instruction bytes; raises CfiDecodeError when it runs out."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data = data
        self.position = position

    def at_end(self) -> bool:
        return self.position >= len(self.data)

    def fixed(self, fmt: str, size: int) -> int:
        if self.position + size > len(self.data):
            raise CfiDecodeError("truncated CFA instruction operand")
        (value,) = struct.unpack_from(fmt, self.data, self.position)
        self.position += size
        return int(value)

    def u8(self) -> int:
        return self.fixed("<B", 1)

    def uleb128(self) -> int:
        try:
            value, self.position = read_uleb128(self.data, self.position)
        except Truncated as error:
            raise CfiDecodeError(str(error)) from None
        return value

    def sleb128(self) -> int:
        try:
            value, self.position = read_sleb128(self.data, self.position)
        except Truncated as error:
            raise CfiDecodeError(str(error)) from None
        return value

    def block(self) -> bytes:
        length = self.uleb128()
        if self.position + length > len(self.data):
            raise CfiDecodeError("truncated expression block")
        value = self.data[self.position : self.position + length]
        self.position += length
        return value


def decode_pointer(data: bytes, position: int, encoding: int, position_address: int, data_base: int) -> tuple[int, int]:
    """Decode one DW_EH_PE-encoded pointer at data[position]; returns (value, next position).

    position_address is the runtime (ELF virtual) address of data[position], used for pcrel, and
    data_base the address used for datarel (the start of .eh_frame_hdr).
    """
    value_format = encoding & _PE_FORMAT_MASK
    reader = _ByteReader(data, position)
    if value_format == 0x01:
        value = reader.uleb128()
    elif value_format == 0x09:
        value = reader.sleb128()
    elif value_format in _PE_FIXED_FORMATS:
        fmt, size = _PE_FIXED_FORMATS[value_format]
        value = reader.fixed(fmt, size)
    else:
        raise CfiDecodeError(f"unsupported pointer format {encoding:#x}")
    application = encoding & _PE_APPLICATION_MASK
    if application == _PE_PCREL:
        value += position_address
    elif application == _PE_DATAREL:
        value += data_base
    elif application != 0:
        raise CfiDecodeError(f"unsupported pointer application {encoding:#x}")
    if encoding & _PE_INDIRECT:
        # An indirect pointer needs the loaded image; CFI in practice never uses it for FDE addresses.
        raise CfiDecodeError("indirect pointer encoding")
    return value & _ADDRESS_MASK, reader.position


class _RawInstructionCallFrameInfo(CallFrameInfo):
    """pyelftools' entry parser, but keeping each entry's instructions as raw bytes.

    The instruction list pyelftools would build is replaced by one (section offset, bytes) pair, so
    that this module's decoder sees every opcode, including ones pyelftools cannot parse.
    """

    def _parse_instructions(self, structs: DWARFStructs, offset: int, end_offset: int) -> list[Any]:
        self.stream.seek(offset)
        raw = self.stream.read(max(0, end_offset - offset))
        self.stream.seek(end_offset)
        return [(offset, raw)]

    def entry_at(self, offset: int) -> Any:
        return self._parse_entry_at(offset)


@dataclass(frozen=True, slots=True)
class _CieInfo:
    code_alignment: int
    data_alignment: int
    return_address_register: int
    is_signal_frame: bool
    fde_encoding: int
    initial_instructions: bytes
    instructions_offset: int


class _FrameSection:
    """One `.eh_frame` or `.debug_frame` section: entry parsing, FDE lookup and decoding."""

    def __init__(self, data: bytes, address: int, is_eh_frame: bool, hdr: tuple[bytes, int] | None) -> None:
        self.data = data
        self.address = address
        self.is_eh_frame = is_eh_frame
        self._parser = _RawInstructionCallFrameInfo(
            stream=io.BytesIO(data),
            size=len(data),
            address=address,
            base_structs=DWARFStructs(little_endian=True, dwarf_format=32, address_size=8),
            for_eh_frame=is_eh_frame,
        )
        self._cies: dict[int, _CieInfo] = {}
        self._decoded: dict[int, DecodedFde | None] = {}
        # Either the .eh_frame_hdr search table or, without one, every FDE's range (built on first use).
        self._index_starts: list[int] | None = None
        self._index_offsets: list[int] = []
        self._index_ends: list[int] | None = None
        self._hdr = hdr
        self.decoded_fde_count = 0

    # --- index -------------------------------------------------------------------------------------

    def _build_index(self) -> None:
        if self._hdr is not None:
            try:
                self._index_from_hdr(*self._hdr)
                return
            except CfiDecodeError:
                pass  # fall back to a full parse of the section
        self._index_from_entries()

    def _index_from_hdr(self, hdr_data: bytes, hdr_address: int) -> None:
        if len(hdr_data) < 4 or hdr_data[0] != 1:
            raise CfiDecodeError("unknown .eh_frame_hdr version")
        frame_pointer_encoding, count_encoding, table_encoding = hdr_data[1], hdr_data[2], hdr_data[3]
        if count_encoding == _PE_OMIT or table_encoding == _PE_OMIT:
            raise CfiDecodeError(".eh_frame_hdr has no search table")
        position = 4
        _frame_address, position = decode_pointer(
            hdr_data, position, frame_pointer_encoding, hdr_address + position, hdr_address
        )
        count, position = decode_pointer(hdr_data, position, count_encoding, hdr_address + position, hdr_address)
        if table_encoding != 0x3B:
            raise CfiDecodeError(f"unhandled search table encoding {table_encoding:#x}")
        # datarel|sdata4, the encoding every GNU linker writes: a flat array of int32 pairs.
        if position + count * 8 > len(hdr_data):
            raise CfiDecodeError(".eh_frame_hdr search table is truncated")
        pairs = struct.unpack_from(f"<{count * 2}i", hdr_data, position)
        self._index_starts = [(hdr_address + value) & _ADDRESS_MASK for value in pairs[0::2]]
        self._index_offsets = [hdr_address + value - self.address for value in pairs[1::2]]
        self._index_ends = None

    def _index_from_entries(self) -> None:
        ranges: list[tuple[int, int, int]] = []
        try:
            entries = self._parser.get_entries()
        except Exception:
            # A corrupt section: keep whatever entries the parser managed before failing.
            entries = list(self._parser._entry_cache.values())
        for entry in entries:
            if isinstance(entry, FDE):
                start = int(entry.header["initial_location"])
                ranges.append((start, start + int(entry.header["address_range"]), entry.offset))
        ranges.sort()
        self._index_starts = [start for start, _end, _offset in ranges]
        self._index_ends = [end for _start, end, _offset in ranges]
        self._index_offsets = [offset for _start, _end, offset in ranges]

    def fde_offsets(self) -> list[int]:
        if self._index_starts is None:
            self._build_index()
        return list(self._index_offsets)

    # --- lookup ------------------------------------------------------------------------------------

    def find_fde(self, address: int) -> DecodedFde | None:
        if self._index_starts is None:
            self._build_index()
        assert self._index_starts is not None
        index = bisect.bisect_right(self._index_starts, address) - 1
        if index < 0:
            return None
        if self._index_ends is not None and address >= self._index_ends[index]:
            return None
        decoded = self.decode_fde_at(self._index_offsets[index])
        if decoded is None or not decoded.start <= address < decoded.end:
            return None
        return decoded

    def decode_fde_at(self, offset: int) -> DecodedFde | None:
        if offset in self._decoded:
            return self._decoded[offset]
        try:
            decoded = self._decode_fde(offset)
        except Exception:
            # pyelftools raises assorted exceptions (asserts, construct errors) on malformed entries;
            # an undecodable FDE simply provides no CFI.
            decoded = None
        self._decoded[offset] = decoded
        self.decoded_fde_count += 1
        return decoded

    def _cie_info(self, cie: CIE) -> _CieInfo:
        cached = self._cies.get(cie.offset)
        if cached is not None:
            return cached
        header = cie.header
        augmentation = bytes(header.get("augmentation") or b"")
        instructions_offset, raw = cie.instructions[0]
        info = _CieInfo(
            code_alignment=int(header["code_alignment_factor"]),
            data_alignment=int(header["data_alignment_factor"]),
            return_address_register=int(header["return_address_register"]),
            is_signal_frame=augmentation.startswith(b"z") and b"S" in augmentation,
            fde_encoding=int(cie.augmentation_dict.get("FDE_encoding", 0)),
            initial_instructions=raw,
            instructions_offset=instructions_offset,
        )
        self._cies[cie.offset] = info
        return info

    def _decode_fde(self, offset: int) -> DecodedFde | None:
        entry = self._parser.entry_at(offset)
        if not isinstance(entry, FDE):
            return None
        cie = self._cie_info(entry.cie)
        start = int(entry.header["initial_location"]) & _ADDRESS_MASK
        end = start + int(entry.header["address_range"])
        instructions_offset, raw = entry.instructions[0]
        return _decode_rows(
            cie,
            start,
            end,
            raw,
            instructions_offset,
            section_address=self.address,
            is_eh_frame=self.is_eh_frame,
        )


class _RuleState:
    """Mutable CFA + register rule state while executing CFA instructions."""

    __slots__ = ("cfa_register", "cfa_offset", "cfa_expression", "rules")

    def __init__(self) -> None:
        self.cfa_register = -1
        self.cfa_offset = 0
        self.cfa_expression: bytes | None = None
        self.rules: dict[int, tuple[int, Any]] = {}

    def copy(self) -> _RuleState:
        other = _RuleState()
        other.cfa_register = self.cfa_register
        other.cfa_offset = self.cfa_offset
        other.cfa_expression = self.cfa_expression
        other.rules = dict(self.rules)
        return other


def _execute(
    state: _RuleState,
    data: bytes,
    cie: _CieInfo,
    initial_rules: dict[int, tuple[int, Any]] | None,
    location: int,
    end: int,
    emit: Any,
    instructions_address: int | None,
) -> int:
    """Run CFA instructions over `state`, calling emit(location) before each location advance.

    Returns the final location. initial_rules is None while running the CIE's own instructions
    (DW_CFA_restore is then meaningless).
    """
    reader = _ByteReader(data)
    remembered: list[_RuleState] = []
    code_alignment = cie.code_alignment
    data_alignment = cie.data_alignment

    def restore(register: int) -> None:
        if initial_rules is not None and register in initial_rules:
            state.rules[register] = initial_rules[register]
        else:
            state.rules.pop(register, None)

    def advance(delta: int) -> None:
        nonlocal location
        emit(location)
        location += delta

    while not reader.at_end():
        opcode = reader.u8()
        high = opcode & 0xC0
        low = opcode & 0x3F
        if high == 0x40:  # DW_CFA_advance_loc
            advance(low * code_alignment)
        elif high == 0x80:  # DW_CFA_offset
            state.rules[low] = (RULE_OFFSET, reader.uleb128() * data_alignment)
        elif high == 0xC0:  # DW_CFA_restore
            restore(low)
        elif opcode == 0x00:  # nop
            pass
        elif opcode == 0x01:  # set_loc
            if instructions_address is None:
                raise CfiDecodeError("DW_CFA_set_loc without a known encoding")
            new_location, reader.position = decode_pointer(
                data, reader.position, cie.fde_encoding, instructions_address + reader.position, 0
            )
            emit(location)
            location = new_location
        elif opcode == 0x02:
            advance(reader.u8() * code_alignment)
        elif opcode == 0x03:
            advance(reader.fixed("<H", 2) * code_alignment)
        elif opcode == 0x04:
            advance(reader.fixed("<I", 4) * code_alignment)
        elif opcode == 0x05:  # offset_extended
            register = reader.uleb128()
            state.rules[register] = (RULE_OFFSET, reader.uleb128() * data_alignment)
        elif opcode == 0x06:  # restore_extended
            restore(reader.uleb128())
        elif opcode == 0x07:  # undefined
            state.rules[reader.uleb128()] = (RULE_UNDEFINED, None)
        elif opcode == 0x08:  # same_value
            state.rules[reader.uleb128()] = (RULE_SAME_VALUE, None)
        elif opcode == 0x09:  # register
            register = reader.uleb128()
            state.rules[register] = (RULE_REGISTER, reader.uleb128())
        elif opcode == 0x0A:  # remember_state
            remembered.append(state.copy())
        elif opcode == 0x0B:  # restore_state
            if not remembered:
                raise CfiDecodeError("DW_CFA_restore_state without remember_state")
            saved = remembered.pop()
            state.cfa_register = saved.cfa_register
            state.cfa_offset = saved.cfa_offset
            state.cfa_expression = saved.cfa_expression
            state.rules = saved.rules
        elif opcode == 0x0C:  # def_cfa
            state.cfa_register = reader.uleb128()
            state.cfa_offset = reader.uleb128()
            state.cfa_expression = None
        elif opcode == 0x0D:  # def_cfa_register
            state.cfa_register = reader.uleb128()
            state.cfa_expression = None
        elif opcode == 0x0E:  # def_cfa_offset
            state.cfa_offset = reader.uleb128()
        elif opcode == 0x0F:  # def_cfa_expression
            state.cfa_expression = reader.block()
            state.cfa_register = -1
        elif opcode == 0x10:  # expression
            register = reader.uleb128()
            state.rules[register] = (RULE_EXPRESSION, reader.block())
        elif opcode == 0x11:  # offset_extended_sf
            register = reader.uleb128()
            state.rules[register] = (RULE_OFFSET, reader.sleb128() * data_alignment)
        elif opcode == 0x12:  # def_cfa_sf: the offset is factored by the *data* alignment
            state.cfa_register = reader.uleb128()
            state.cfa_offset = reader.sleb128() * data_alignment
            state.cfa_expression = None
        elif opcode == 0x13:  # def_cfa_offset_sf
            state.cfa_offset = reader.sleb128() * data_alignment
        elif opcode == 0x14:  # val_offset
            register = reader.uleb128()
            state.rules[register] = (RULE_VAL_OFFSET, reader.uleb128() * data_alignment)
        elif opcode == 0x15:  # val_offset_sf
            register = reader.uleb128()
            state.rules[register] = (RULE_VAL_OFFSET, reader.sleb128() * data_alignment)
        elif opcode == 0x16:  # val_expression
            register = reader.uleb128()
            state.rules[register] = (RULE_VAL_EXPRESSION, reader.block())
        elif opcode == 0x2E:  # GNU_args_size: only matters for exception landing pads
            reader.uleb128()
        elif opcode == 0x2F:  # GNU_negative_offset_extended
            register = reader.uleb128()
            state.rules[register] = (RULE_OFFSET, -reader.uleb128() * data_alignment)
        elif opcode == 0x2D:  # GNU_window_save (SPARC) has no meaning on x86-64
            raise CfiDecodeError("DW_CFA_GNU_window_save on x86-64")
        else:
            raise CfiDecodeError(f"unknown CFA opcode {opcode:#x}")
        if location > end:
            break
    return location


def _decode_rows(
    cie: _CieInfo,
    start: int,
    end: int,
    fde_instructions: bytes,
    fde_instructions_offset: int,
    section_address: int,
    is_eh_frame: bool,
) -> DecodedFde:
    state = _RuleState()
    _execute(state, cie.initial_instructions, cie, None, start, end, lambda _location: None, None)
    initial_rules = dict(state.rules)
    locations: list[int] = []
    rows: list[CfiRow] = []
    previous_key: tuple[Any, ...] | None = None

    def emit(location: int) -> None:
        nonlocal previous_key
        key = (state.cfa_register, state.cfa_offset, state.cfa_expression, tuple(sorted(state.rules.items())))
        if key == previous_key:
            return  # identical rules continue; keeping one row keeps the bisect short
        if locations and location <= locations[-1]:
            # Several rows at one location (advance by zero): the last one wins.
            locations.pop()
            rows.pop()
        previous_key = key
        locations.append(location)
        rows.append(
            _make_row(
                state.cfa_register,
                state.cfa_offset,
                state.cfa_expression,
                state.rules,
                cie.return_address_register,
                cie.is_signal_frame,
            )
        )

    instructions_address = section_address + fde_instructions_offset if is_eh_frame else None
    final_location = _execute(state, fde_instructions, cie, initial_rules, start, end, emit, instructions_address)
    if final_location < end:
        emit(final_location)
    return DecodedFde(start=start, end=end, locations=locations, rows=rows)


def _section_bytes(elf: ELFFile, name: str) -> tuple[bytes, int] | None:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_size"] == 0:
        return None
    return section.data(), int(section["sh_addr"])


class CfiTable:
    """Unwind rules of one ELF file, keyed by ELF virtual address (not runtime address)."""

    def __init__(self, path: str, debug_path: str | None = None) -> None:
        self.path = path
        self.debug_path = debug_path
        self._sources: list[_FrameSection] = []
        self._debug_sources_loaded = False
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            eh_frame = _section_bytes(elf, ".eh_frame")
            hdr = _section_bytes(elf, ".eh_frame_hdr")
            if eh_frame is not None:
                self._sources.append(_FrameSection(eh_frame[0], eh_frame[1], is_eh_frame=True, hdr=hdr))
            self._own_debug_frame = _section_bytes(elf, ".debug_frame")
        self._lock = threading.Lock()

    def _load_debug_sources(self) -> None:
        """Add .debug_frame sources; they are only needed for addresses .eh_frame does not cover."""
        self._debug_sources_loaded = True
        if self._own_debug_frame is not None:
            data, address = self._own_debug_frame
            self._sources.append(_FrameSection(data, address, is_eh_frame=False, hdr=None))
        if self.debug_path:
            try:
                with open(self.debug_path, "rb") as stream:
                    debug_frame = _section_bytes(ELFFile(stream), ".debug_frame")
            except Exception:
                debug_frame = None
            if debug_frame is not None:
                self._sources.append(_FrameSection(debug_frame[0], debug_frame[1], is_eh_frame=False, hdr=None))

    def find_fde(self, address: int) -> DecodedFde | None:
        with self._lock:
            for source in self._sources:
                decoded = source.find_fde(address)
                if decoded is not None:
                    return decoded
            if not self._debug_sources_loaded:
                before = len(self._sources)
                self._load_debug_sources()
                for source in self._sources[before:]:
                    decoded = source.find_fde(address)
                    if decoded is not None:
                        return decoded
        return None

    def find_row(self, address: int) -> CfiRow | None:
        decoded = self.find_fde(address)
        if decoded is None:
            return None
        return decoded.row_for(address)

    def eh_frame_fdes(self) -> list[DecodedFde]:
        """Decode every .eh_frame FDE (for checks and statistics; unwinding never needs this)."""
        result: list[DecodedFde] = []
        for source in self._sources:
            if not source.is_eh_frame:
                continue
            for offset in source.fde_offsets():
                decoded = source.decode_fde_at(offset)
                if decoded is not None:
                    result.append(decoded)
        return result

    @property
    def decoded_fde_count(self) -> int:
        return sum(source.decoded_fde_count for source in self._sources)


_TABLE_CACHE: dict[tuple[str, str | None], CfiTable | None] = {}
_TABLE_CACHE_LOCK = threading.Lock()


def get_cfi_table(path: str, build_id: str | None = None, debug_path: str | None = None) -> CfiTable | None:
    """Shared CfiTable per build-id (or per path when there is none); None if the file cannot be read.

    The same library mapped into many processes (or found under different /proc/PID/root paths) is
    then parsed once.
    """
    key = (build_id or path, debug_path)
    with _TABLE_CACHE_LOCK:
        if key in _TABLE_CACHE:
            return _TABLE_CACHE[key]
    try:
        table: CfiTable | None = CfiTable(path, debug_path)
    except Exception:
        # Unreadable or not an ELF file: callers treat the module as having no CFI.
        table = None
    with _TABLE_CACHE_LOCK:
        return _TABLE_CACHE.setdefault(key, table)


def clear_cfi_table_cache() -> None:
    with _TABLE_CACHE_LOCK:
        _TABLE_CACHE.clear()
