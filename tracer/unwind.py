"""Unwind a snapshot of a user stack (registers + stack bytes copied by BPF) with DWARF CFI.

Frame pointers cannot be trusted: Debian's glibc and any -O2 build omit them, so the stack is walked
the way a debugger does it, with the `.eh_frame`/`.debug_frame` rules of each module (see tracer/cfi.py).

The walk never reads anything but the snapshot, so it can run offline. It stops rather than guesses:
a result is either complete (the outermost frame's CFI says "return address undefined", as `_start` and
the child side of `clone3` do) or a correct prefix with the reason it stopped.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from .cfi import (
    REGISTER_COUNT,
    REGISTER_NUMBERS,
    RIP,
    RSP,
    RULE_EXPRESSION,
    RULE_OFFSET,
    RULE_REGISTER,
    RULE_SAME_VALUE,
    RULE_VAL_EXPRESSION,
    RULE_VAL_OFFSET,
    CfiRow,
    CfiTable,
    get_cfi_table,
)
from .leb128 import Truncated, read_sleb128, read_uleb128

ADDRESS_MASK = (1 << 64) - 1

# Registers the x86-64 psABI makes callee-saved: without a rule they keep their value across a frame.
# All others are clobbered by calls, so their value in the caller is unknown.
CALLEE_SAVED_REGISTERS = (3, 6, 12, 13, 14, 15)
CALLER_SAVED_REGISTERS = (0, 1, 2, 4, 5, 8, 9, 10, 11)
_UNPACK_U64 = struct.Struct("<Q").unpack_from

STATUS_COMPLETE = "complete"
STATUS_TRUNCATED = "truncated-snapshot"
STATUS_NO_CFI = "no-cfi"
STATUS_NO_MODULE = "no-module"
STATUS_BAD_CFA = "bad-cfa"
STATUS_MAX_DEPTH = "max-depth"

# Each DWARF expression is tiny (the PLT one has 11 operations); the bound only stops a corrupt
# expression from looping through DW_OP_skip/DW_OP_bra.
_MAX_EXPRESSION_STEPS = 256
_ROW_CACHE_LIMIT = 1 << 18


@dataclass(frozen=True)
class UnwindModule:
    """One executable mapping of the target process."""

    path: str  # host-openable path of the ELF (may be under /proc/PID/root)
    start: int  # runtime address range of the executable mapping
    end: int
    load_bias: int  # runtime address - ELF virtual address
    build_id: str | None = None
    debug_path: str | None = None  # separate debug file, searched for .debug_frame


@dataclass
class StackSnapshot:
    registers: dict[str, int]  # at least rip and rsp; rbp, rbx, r12-r15 when captured
    stack_base: int  # rsp at capture time: stack[0] is the byte at this address
    stack: bytes
    # stack slot address -> original return address, for slots a uretprobe replaced by its trampoline
    return_address_shadow: dict[int, int] = field(default_factory=dict)


@dataclass
class UnwindResult:
    pcs: list[int]  # innermost first: the exact pc, then return addresses
    status: str


class _StopUnwind(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Memory:
    """Bounds-checked 64-bit reads from the snapshot."""

    __slots__ = ("base", "data", "limit")

    def __init__(self, base: int, data: bytes) -> None:
        self.base = base
        self.data = data
        self.limit = base + len(data)

    def read(self, address: int, size: int = 8) -> int:
        offset = address - self.base
        if offset < 0:
            # Below the captured sp: nothing a correct unwind ever needs.
            raise _StopUnwind(STATUS_BAD_CFA)
        if offset + size > len(self.data):
            raise _StopUnwind(STATUS_TRUNCATED)
        return int.from_bytes(self.data[offset : offset + size], "little")


def _signed(value: int) -> int:
    value &= ADDRESS_MASK
    return value - (1 << 64) if value & (1 << 63) else value


def _read_uleb(expression: bytes, position: int) -> tuple[int, int]:
    try:
        return read_uleb128(expression, position)
    except Truncated:
        raise _StopUnwind(STATUS_BAD_CFA) from None


def _read_sleb(expression: bytes, position: int) -> tuple[int, int]:
    try:
        return read_sleb128(expression, position)
    except Truncated:
        raise _StopUnwind(STATUS_BAD_CFA) from None


_CONSTANT_FORMATS = {
    0x08: (1, False),  # const1u
    0x09: (1, True),  # const1s
    0x0A: (2, False),
    0x0B: (2, True),
    0x0C: (4, False),
    0x0D: (4, True),
    0x0E: (8, False),
    0x0F: (8, True),
}

_BINARY_OPERATIONS: dict[int, Callable[[int, int], int]] = {
    0x1A: lambda first, second: first & second,  # and
    0x1C: lambda first, second: first - second,  # minus
    0x1E: lambda first, second: first * second,  # mul
    0x21: lambda first, second: first | second,  # or
    0x22: lambda first, second: first + second,  # plus
    0x24: lambda first, second: first << (second & 63) if second < 64 else 0,  # shl
    0x25: lambda first, second: first >> second if second < 64 else 0,  # shr
    0x26: lambda first, second: _signed(first) >> min(second, 63),  # shra
    0x27: lambda first, second: first ^ second,  # xor
    0x29: lambda first, second: int(_signed(first) == _signed(second)),  # eq
    0x2A: lambda first, second: int(_signed(first) >= _signed(second)),  # ge
    0x2B: lambda first, second: int(_signed(first) > _signed(second)),  # gt
    0x2C: lambda first, second: int(_signed(first) <= _signed(second)),  # le
    0x2D: lambda first, second: int(_signed(first) < _signed(second)),  # lt
    0x2E: lambda first, second: int(_signed(first) != _signed(second)),  # ne
}


_SINGLE_REGISTER_OFFSETS: dict[bytes, tuple[int, int] | None] = {}


def _single_register_offset(expression: bytes) -> tuple[int, int] | None:
    """(register, offset) when the expression is exactly one DW_OP_bregN; memoized per expression."""
    if expression in _SINGLE_REGISTER_OFFSETS:
        return _SINGLE_REGISTER_OFFSETS[expression]
    result = None
    if expression and 0x70 <= expression[0] <= 0x8F:
        try:
            offset, position = _read_sleb(expression, 1)
        except _StopUnwind:
            position = -1
        if position == len(expression):
            result = (expression[0] - 0x70, offset)
    if len(_SINGLE_REGISTER_OFFSETS) < 4096:
        _SINGLE_REGISTER_OFFSETS[expression] = result
    return result


def _register_value_or_stop(registers: list[int | None], number: int) -> int:
    value = registers[number] if 0 <= number < REGISTER_COUNT else None
    if value is None:
        raise _StopUnwind(STATUS_BAD_CFA)
    return value


def evaluate_expression(
    expression: bytes,
    registers: list[int | None],
    memory: _Memory,
    initial_stack: Iterable[int] = (),
) -> int:
    """Evaluate a DWARF location expression as CFI uses it; returns the value on top of the stack.

    Covers what x86-64 CFI contains in practice: the PLT's CFA (breg7, breg16, lit, and, ge, shl,
    plus) and the signal frame's register slots (breg7 + deref). Raises _StopUnwind on anything it
    cannot evaluate, so a garbage snapshot ends the unwind instead of the caller.
    """
    simple = _single_register_offset(expression)
    if simple is not None:
        # "DW_OP_bregN off" alone: every register slot of the signal frame looks like this.
        return (_register_value_or_stop(registers, simple[0]) + simple[1]) & ADDRESS_MASK
    stack = [value & ADDRESS_MASK for value in initial_stack]
    position = 0
    steps = 0
    length = len(expression)

    def pop() -> int:
        if not stack:
            raise _StopUnwind(STATUS_BAD_CFA)
        return stack.pop()

    while position < length:
        steps += 1
        if steps > _MAX_EXPRESSION_STEPS:
            raise _StopUnwind(STATUS_BAD_CFA)
        opcode = expression[position]
        position += 1
        if 0x30 <= opcode <= 0x4F:  # lit0..lit31
            stack.append(opcode - 0x30)
        elif 0x70 <= opcode <= 0x8F:  # breg0..breg31
            offset, position = _read_sleb(expression, position)
            stack.append((_register_value_or_stop(registers, opcode - 0x70) + offset) & ADDRESS_MASK)
        elif 0x50 <= opcode <= 0x6F:  # reg0..reg31, used as a value here
            stack.append(_register_value_or_stop(registers, opcode - 0x50))
        elif opcode == 0x92:  # bregx
            number, position = _read_uleb(expression, position)
            offset, position = _read_sleb(expression, position)
            stack.append((_register_value_or_stop(registers, number) + offset) & ADDRESS_MASK)
        elif opcode in _CONSTANT_FORMATS:
            size, is_signed = _CONSTANT_FORMATS[opcode]
            if position + size > length:
                raise _StopUnwind(STATUS_BAD_CFA)
            value = int.from_bytes(expression[position : position + size], "little", signed=is_signed)
            position += size
            stack.append(value & ADDRESS_MASK)
        elif opcode == 0x10:  # constu
            value, position = _read_uleb(expression, position)
            stack.append(value & ADDRESS_MASK)
        elif opcode == 0x11:  # consts
            value, position = _read_sleb(expression, position)
            stack.append(value & ADDRESS_MASK)
        elif opcode == 0x06:  # deref
            stack.append(memory.read(pop()))
        elif opcode == 0x94:  # deref_size
            if position >= length:
                raise _StopUnwind(STATUS_BAD_CFA)
            size = expression[position]
            position += 1
            if not 1 <= size <= 8:
                raise _StopUnwind(STATUS_BAD_CFA)
            stack.append(memory.read(pop(), size))
        elif opcode in _BINARY_OPERATIONS:
            second = pop()
            first = pop()
            stack.append(_BINARY_OPERATIONS[opcode](first, second) & ADDRESS_MASK)
        elif opcode == 0x23:  # plus_uconst
            value, position = _read_uleb(expression, position)
            stack.append((pop() + value) & ADDRESS_MASK)
        elif opcode in (0x1B, 0x1D):  # div (signed), mod
            second = pop()
            first = pop()
            if second == 0:
                raise _StopUnwind(STATUS_BAD_CFA)
            if opcode == 0x1B:
                quotient = abs(_signed(first)) // abs(_signed(second))
                if (_signed(first) < 0) != (_signed(second) < 0):
                    quotient = -quotient
                stack.append(quotient & ADDRESS_MASK)
            else:
                stack.append(first % second)
        elif opcode == 0x19:  # abs
            stack.append(abs(_signed(pop())) & ADDRESS_MASK)
        elif opcode == 0x1F:  # neg
            stack.append(-_signed(pop()) & ADDRESS_MASK)
        elif opcode == 0x20:  # not
            stack.append(~pop() & ADDRESS_MASK)
        elif opcode == 0x12:  # dup
            value = pop()
            stack.extend((value, value))
        elif opcode == 0x13:  # drop
            pop()
        elif opcode == 0x14:  # over
            if len(stack) < 2:
                raise _StopUnwind(STATUS_BAD_CFA)
            stack.append(stack[-2])
        elif opcode == 0x15:  # pick
            if position >= length:
                raise _StopUnwind(STATUS_BAD_CFA)
            index = expression[position]
            position += 1
            if index >= len(stack):
                raise _StopUnwind(STATUS_BAD_CFA)
            stack.append(stack[-1 - index])
        elif opcode == 0x16:  # swap
            second = pop()
            first = pop()
            stack.extend((second, first))
        elif opcode == 0x17:  # rot
            top = pop()
            second = pop()
            third = pop()
            stack.extend((top, third, second))
        elif opcode in (0x2F, 0x28):  # skip, bra
            if position + 2 > length:
                raise _StopUnwind(STATUS_BAD_CFA)
            offset = int.from_bytes(expression[position : position + 2], "little", signed=True)
            position += 2
            if opcode == 0x2F or pop() != 0:
                position += offset
                if not 0 <= position <= length:
                    raise _StopUnwind(STATUS_BAD_CFA)
        elif opcode == 0x96:  # nop
            pass
        else:
            raise _StopUnwind(STATUS_BAD_CFA)
    return pop()


class Unwinder:
    """Unwinds stack snapshots of one process image (a fixed list of executable mappings)."""

    def __init__(self, modules: list[UnwindModule]) -> None:
        self._modules = sorted(modules, key=lambda module: module.start)
        self._starts = [module.start for module in self._modules]
        self._tables: dict[int, CfiTable | None] = {}
        # lookup pc -> its CFI row, or the stop status for it; a pc's rules never change for one image.
        self._row_cache: dict[int, CfiRow | str] = {}

    def module_for(self, address: int) -> UnwindModule | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self._modules[index].end:
            return self._modules[index]
        return None

    def _table(self, index: int) -> CfiTable | None:
        if index not in self._tables:
            module = self._modules[index]
            self._tables[index] = get_cfi_table(module.path, module.build_id, module.debug_path)
        return self._tables[index]

    def _row_for(self, lookup_pc: int) -> CfiRow | str:
        cached = self._row_cache.get(lookup_pc)
        if cached is not None:
            return cached
        index = bisect.bisect_right(self._starts, lookup_pc) - 1
        result: CfiRow | str
        if index < 0 or lookup_pc >= self._modules[index].end:
            result = STATUS_NO_MODULE
        else:
            table = self._table(index)
            row = table.find_row(lookup_pc - self._modules[index].load_bias) if table is not None else None
            result = row if row is not None else STATUS_NO_CFI
        if len(self._row_cache) >= _ROW_CACHE_LIMIT:
            self._row_cache.clear()
        self._row_cache[lookup_pc] = result
        return result

    def unwind(self, snapshot: StackSnapshot, max_frames: int = 128) -> UnwindResult:
        registers: list[int | None] = [None] * REGISTER_COUNT
        try:
            for name, value in snapshot.registers.items():
                number = REGISTER_NUMBERS.get(name)
                if number is not None and isinstance(value, int):
                    registers[number] = value & ADDRESS_MASK
            memory = _Memory(int(snapshot.stack_base) & ADDRESS_MASK, bytes(snapshot.stack))
            shadow = dict(snapshot.return_address_shadow or {})
        except (TypeError, ValueError, AttributeError):
            return UnwindResult(pcs=[], status=STATUS_BAD_CFA)
        pc = registers[RIP]
        if pc is None or registers[RSP] is None:
            return UnwindResult(pcs=[], status=STATUS_BAD_CFA)
        pcs = [pc]
        if max_frames <= 1:
            return UnwindResult(pcs=pcs, status=STATUS_MAX_DEPTH)
        try:
            status = self._walk(registers, memory, shadow, pcs, max_frames)
        except _StopUnwind as stop:
            status = stop.status
        return UnwindResult(pcs=pcs, status=status)

    def _walk(
        self,
        registers: list[int | None],
        memory: _Memory,
        shadow: dict[int, int],
        pcs: list[int],
        max_frames: int,
    ) -> str:
        # Hot loop: a tracer unwinds every event, so the common row (CFA = reg + off, everything saved
        # at CFA + off) avoids method calls and exceptions; other rows go through _step_general.
        data = memory.data
        base = memory.base
        size = len(data)
        unpack = _UNPACK_U64
        row_cache = self._row_cache
        lookup_pc = pcs[0]  # the innermost pc is exact; return addresses are looked up at RA - 1
        previous_cfa = -1
        # Caller-saved registers are unknown in callers; they only need clearing while they hold values.
        volatile_known = True
        while True:
            row = row_cache.get(lookup_pc)
            if row is None:
                row = self._row_for(lookup_pc)
            if type(row) is str:
                return row
            assert isinstance(row, CfiRow)
            if row.return_address_undefined:
                return STATUS_COMPLETE
            stack_pointer = registers[RSP]
            assert stack_pointer is not None

            saved_offsets = row.saved_offsets
            if saved_offsets is not None:
                cfa_register = row.cfa_register
                cfa_base = registers[cfa_register] if 0 <= cfa_register < REGISTER_COUNT else None
                if cfa_base is None:
                    return STATUS_BAD_CFA
                cfa = (cfa_base + row.cfa_offset) & ADDRESS_MASK
                # The CFA is the caller's sp, which lies strictly above this frame's sp (and above every
                # earlier CFA). Requiring it makes every step move up the stack, so garbage cannot loop.
                if cfa <= stack_pointer or cfa <= previous_cfa:
                    return STATUS_BAD_CFA
                return_slot = cfa + row.return_address_offset  # type: ignore[operator]
                offset = return_slot - base
                if offset < 0:
                    return STATUS_BAD_CFA
                if offset + 8 > size:
                    return STATUS_TRUNCATED
                return_address = unpack(data, offset)[0]
                for number, saved_offset in saved_offsets:
                    offset = cfa + saved_offset - base
                    if offset < 0:
                        return STATUS_BAD_CFA
                    if offset + 8 > size:
                        return STATUS_TRUNCATED
                    registers[number] = unpack(data, offset)[0]
                if volatile_known:
                    for number in CALLER_SAVED_REGISTERS:
                        registers[number] = None
                    volatile_known = False
                registers[RSP] = cfa
            else:
                lowest_cfa = max(stack_pointer, previous_cfa)
                cfa, return_address, return_slot, registers = self._step_general(row, registers, memory, lowest_cfa)
                volatile_known = True
            previous_cfa = cfa

            if shadow and return_slot in shadow and self.module_for(return_address) is None:
                # A uretprobe put its trampoline into this slot; the BPF side kept the original.
                return_address = shadow[return_slot] & ADDRESS_MASK
            if return_address == 0:
                # Some hand-written entry points zero the return address instead of marking it
                # undefined; without CFI saying so this is not a clean end, so it is not "complete".
                return STATUS_BAD_CFA
            registers[RIP] = return_address
            pcs.append(return_address)
            if len(pcs) >= max_frames:
                return STATUS_MAX_DEPTH
            # After a signal frame the "return address" is the interrupted pc itself, not a call site.
            lookup_pc = return_address if row.is_signal_frame else return_address - 1

    @staticmethod
    def _step_general(
        row: CfiRow, registers: list[int | None], memory: _Memory, lowest_cfa: int
    ) -> tuple[int, int, int | None, list[int | None]]:
        """One frame under arbitrary rules: returns (cfa, return address, its slot, caller registers).

        The CFA must lie above lowest_cfa (this frame's sp and every earlier CFA), checked before any
        rule reads memory so that a wild CFA reports "bad-cfa" rather than a misleading truncation.
        """
        if row.cfa_expression is None:
            cfa_base = registers[row.cfa_register] if 0 <= row.cfa_register < REGISTER_COUNT else None
            if cfa_base is None:
                raise _StopUnwind(STATUS_BAD_CFA)
            cfa = (cfa_base + row.cfa_offset) & ADDRESS_MASK
        else:
            cfa = evaluate_expression(row.cfa_expression, registers, memory)
        if cfa <= lowest_cfa:
            raise _StopUnwind(STATUS_BAD_CFA)
        caller: list[int | None] = [None] * REGISTER_COUNT
        for number in CALLEE_SAVED_REGISTERS:
            caller[number] = registers[number]
        return_address: int | None = None
        return_slot: int | None = None
        for number, (kind, operand) in row.rules.items():
            value: int | None
            slot: int | None = None
            if kind == RULE_OFFSET:
                slot = (cfa + operand) & ADDRESS_MASK
                value = memory.read(slot)
            elif kind == RULE_VAL_OFFSET:
                value = (cfa + operand) & ADDRESS_MASK
            elif kind == RULE_REGISTER:
                value = registers[operand] if 0 <= operand < REGISTER_COUNT else None
            elif kind == RULE_EXPRESSION:
                slot = evaluate_expression(operand, registers, memory, (cfa,))
                value = memory.read(slot)
            elif kind == RULE_VAL_EXPRESSION:
                value = evaluate_expression(operand, registers, memory, (cfa,))
            elif kind == RULE_SAME_VALUE:
                value = registers[number] if number < REGISTER_COUNT else None
            else:
                value = None
            if number == row.return_address_register:
                return_address = value
                return_slot = slot
            elif number < REGISTER_COUNT:
                caller[number] = value
        if return_address is None:
            raise _StopUnwind(STATUS_BAD_CFA)
        if caller[RSP] is None or RSP not in row.rules:
            caller[RSP] = cfa
        return cfa, return_address, return_slot, caller


# --- building modules from /proc/PID/maps ---------------------------------------------------------

_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+\S+\s+\d+\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class _ElfFacts:
    loads: tuple[tuple[int, int, int], ...]  # (p_offset, p_vaddr, p_filesz) of each PT_LOAD
    build_id: str | None
    debuglink: str | None


def _elf_facts(path: str) -> _ElfFacts | None:
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            loads = tuple(
                (int(segment["p_offset"]), int(segment["p_vaddr"]), int(segment["p_filesz"]))
                for segment in elf.iter_segments()
                if segment["p_type"] == "PT_LOAD"
            )
            build_id = None
            for segment in elf.iter_segments():
                if segment["p_type"] != "PT_NOTE":
                    continue
                for note in segment.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        build_id = str(note["n_desc"])
            debuglink = None
            section = elf.get_section_by_name(".gnu_debuglink")
            if section is not None:
                debuglink = section.data().split(b"\0", 1)[0].decode("utf-8", "replace") or None
            return _ElfFacts(loads=loads, build_id=build_id, debuglink=debuglink)
    except Exception:
        # Not an ELF file, or one pyelftools cannot read: the mapping gets no module.
        return None


def load_bias_for_mapping(loads: Iterable[tuple[int, int, int]], map_start: int, map_offset: int) -> int | None:
    """Runtime minus ELF virtual address, from the PT_LOAD segment that holds the mapped file offset."""
    page_mask = ~0xFFF
    for file_offset, virtual_address, file_size in loads:
        aligned_offset = file_offset & page_mask
        if aligned_offset <= map_offset < file_offset + max(file_size, 1):
            return map_start - (virtual_address - (file_offset - map_offset))
    return None


def find_debug_file(path: str, build_id: str | None, debuglink: str | None, root: str = "/") -> str | None:
    """Locate a separate debug file the way gdb does: by build-id, then by .gnu_debuglink."""
    candidates: list[str] = []
    if build_id and len(build_id) > 2:
        candidates.append(os.path.join(root, "usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug"))
    if debuglink:
        host_directory = os.path.dirname(path)
        relative_directory = os.path.relpath(host_directory, root) if root != "/" else host_directory
        candidates.append(os.path.join(host_directory, debuglink))
        candidates.append(os.path.join(host_directory, ".debug", debuglink))
        candidates.append(os.path.join(root, "usr/lib/debug", relative_directory.lstrip("/"), debuglink))
    for candidate in candidates:
        if candidate != path and os.path.isfile(candidate):
            return candidate
    return None


def modules_from_maps(maps_text: str, root: str = "/") -> list[UnwindModule]:
    """UnwindModules for the executable file mappings of a /proc/PID/maps text.

    root is prefixed to every mapped path (use /proc/PID/root for a process in another mount namespace).
    Pseudo-mappings ([vdso], [uprobes], anonymous JIT code) get no module: they have no file to read CFI
    from, and pcs there end the unwind with "no-module".
    """
    facts_by_path: dict[str, _ElfFacts | None] = {}
    modules: list[UnwindModule] = []
    for line in maps_text.splitlines():
        match = _MAPS_LINE.match(line.strip())
        if match is None:
            continue
        start_text, end_text, permissions, offset_text, mapped_path = match.groups()
        if "x" not in permissions or not mapped_path.startswith("/") or mapped_path.endswith(" (deleted)"):
            continue
        host_path = os.path.join(root, mapped_path.lstrip("/"))
        if host_path not in facts_by_path:
            facts_by_path[host_path] = _elf_facts(host_path)
        facts = facts_by_path[host_path]
        if facts is None:
            continue
        start = int(start_text, 16)
        bias = load_bias_for_mapping(facts.loads, start, int(offset_text, 16))
        if bias is None:
            continue
        modules.append(
            UnwindModule(
                path=host_path,
                start=start,
                end=int(end_text, 16),
                load_bias=bias,
                build_id=facts.build_id,
                debug_path=find_debug_file(host_path, facts.build_id, facts.debuglink, root),
            )
        )
    return modules
