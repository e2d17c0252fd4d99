"""Choose where to put a function's uprobe so the kernel does not have to single-step.

A uprobe replaces one instruction with int3. When it fires, the kernel either *emulates* the original
instruction (cheap: ~0.5 us on our VMs) or copies it out of line and single-steps it with TF (a #DB trap:
~9.5 us on our VMs, 20x more). On kernels with the nop5 optimisation (6.17+) a probe on a 5-byte nop
becomes a call into a trampoline and skips the trap entirely (~0.35 us).

So when a function starts with an instruction the kernel cannot emulate (free: `test rdi,rdi`), we move
the probe forward to the first emulated instruction, as long as doing so cannot change what the probe
sees: the skipped instructions must not move rsp, write memory, clobber argument registers the probe
reads, or branch; and nothing in the function may jump into the skipped range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import capstone
from capstone import x86_const

from .elf_file import ElfError, ElfFile
from .symbols import Symbol, SymbolTable

# What arch/x86/kernel/uprobes.c emulates instead of single-stepping (read in the kernel source:
# arch_uprobe_analyze_insn tries branch_setup_xol_ops, then push_setup_xol_ops; the rest gets
# default_xol_ops, i.e. an out-of-line single-step):
#   branch_setup_xol_ops: nop (0x90, and 0f 1f /0 "nopl"), jmp rel8 (eb), jmp rel32 (e9), call rel32 (e8),
#                         jcc rel8 (70-7f), jcc rel32 (0f 80-8f); any of these with a 0x66 prefix is refused.
#   push_setup_xol_ops:   push reg (50-57), one byte, or two bytes with exactly the REX prefix 41 (r8-r15).
# can_optimize (6.17+): a 5-byte nop not crossing a page boundary is rewritten into a call to the uprobe
# trampoline (no trap at all). endbr64 is none of these: it would be single-stepped.
NOP_OPCODE = 0x90
NOPL_OPCODE = (0x0F, 0x1F)
JUMP_RELATIVE_OPCODES = frozenset({0xEB, 0xE9})
CALL_RELATIVE_OPCODE = 0xE8
CONDITIONAL_JUMP_SHORT = range(0x70, 0x80)
CONDITIONAL_JUMP_NEAR = range(0x80, 0x90)  # second byte after 0x0f
PUSH_REGISTER_OPCODES = range(0x50, 0x58)
REX_B_ONLY = 0x41
OPERAND_SIZE_PREFIX = 0x66
REP_PREFIX = 0xF3
LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
PAGE_SIZE = 4096
NOP5_LENGTH = 5
NOP5_FAST_PATH_SINCE = (6, 17)

SYSV_ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
MAX_SKIPPED_INSTRUCTIONS = 16

# Sub-registers that alias each 64-bit register: writing any of them changes the argument.
_REGISTER_ALIASES = {
    "rax": {"rax", "eax", "ax", "al", "ah"}, "rbx": {"rbx", "ebx", "bx", "bl", "bh"},
    "rcx": {"rcx", "ecx", "cx", "cl", "ch"}, "rdx": {"rdx", "edx", "dx", "dl", "dh"},
    "rsi": {"rsi", "esi", "si", "sil"}, "rdi": {"rdi", "edi", "di", "dil"},
    "rbp": {"rbp", "ebp", "bp", "bpl"}, "rsp": {"rsp", "esp", "sp", "spl"},
    **{f"r{number}": {f"r{number}", f"r{number}d", f"r{number}w", f"r{number}b"} for number in range(8, 16)},
}
_CONTROL_FLOW_GROUPS = frozenset({
    capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET, capstone.CS_GRP_INT,
    capstone.CS_GRP_IRET, capstone.CS_GRP_PRIVILEGE,
})
_UNSAFE_MNEMONICS = frozenset({"syscall", "sysenter", "int3", "ud2", "hlt", "cpuid", "xbegin", "xend",
                               "xabort", "enter", "leave", "pushf", "pushfq", "popf", "popfq"})


@dataclass(frozen=True)
class Placement:
    function: str
    entry_address: int
    probe_address: int
    offset_from_entry: int
    kind: str  # entry | nop5 | emulated-later | entry-single-step
    first_instruction: str
    probe_instruction: str
    cost_class: str  # nop5 | emulated | single-step
    uretprobe_ok: bool
    misses: str | None
    reason: str


@dataclass(frozen=True)
class _Decoded:
    address: int
    size: int
    raw: bytes
    text: str
    instruction: capstone.CsInsn


def _disassembler() -> capstone.Cs:
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    return disassembler


def _split_prefixes(raw: bytes) -> tuple[list[int], int | None, bytes]:
    """(legacy prefixes, REX byte or None, opcode bytes onward), the way the kernel's decoder sees them."""
    index = 0
    prefixes = []
    while index < len(raw) and raw[index] in LEGACY_PREFIXES:
        prefixes.append(raw[index])
        index += 1
    rex = None
    if index < len(raw) and 0x40 <= raw[index] <= 0x4F:
        rex = raw[index]
        index += 1
    return prefixes, rex, raw[index:]


def emulation_class(raw: bytes, mnemonic: str) -> str:
    """How the kernel handles a uprobe on this instruction: "nop5", "emulated" or "single-step"."""
    prefixes, rex, opcode = _split_prefixes(raw)
    if not opcode:
        return "single-step"
    is_nop = mnemonic == "nop" and (
        (opcode[0] == NOP_OPCODE and REP_PREFIX not in prefixes)
        or (tuple(opcode[:2]) == NOPL_OPCODE and len(opcode) > 2 and (opcode[2] >> 3) & 7 == 0)
    )
    if is_nop:
        return "nop5" if len(raw) == NOP5_LENGTH else "emulated"
    is_branch = (
        opcode[0] in JUMP_RELATIVE_OPCODES or opcode[0] == CALL_RELATIVE_OPCODE
        or opcode[0] in CONDITIONAL_JUMP_SHORT
        or (opcode[0] == 0x0F and len(opcode) > 1 and opcode[1] in CONDITIONAL_JUMP_NEAR)
    )
    if is_branch:
        return "single-step" if OPERAND_SIZE_PREFIX in prefixes else "emulated"
    one_byte_push = len(raw) == 1 or (len(raw) == 2 and rex == REX_B_ONLY)
    if opcode[0] in PUSH_REGISTER_OPCODES and not prefixes and one_byte_push:
        return "emulated"
    return "single-step"


def kernel_has_nop5_fast_path(release: str | None = None) -> bool:
    """Whether the running kernel turns a uprobe on a nop5 into a trampoline call (6.17 and later).

    Later kernels may move the fast path to other nop forms; then this gives a cost that is too low,
    never a wrong placement, because a nop is emulated either way.
    """
    release = release or os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= NOP5_FAST_PATH_SINCE


def _probe_class(item: _Decoded, nop5_fast_path: bool) -> str:
    cost_class = emulation_class(item.raw, item.instruction.mnemonic)
    crosses_page = item.address % PAGE_SIZE > PAGE_SIZE - NOP5_LENGTH
    if cost_class == "nop5" and (crosses_page or not nop5_fast_path):
        return "emulated"  # the kernel only rewrites a nop5 that does not cross a page
    return cost_class


def _written_registers(instruction: capstone.CsInsn) -> set[str]:
    try:
        _, written = instruction.regs_access()
    except capstone.CsError:
        return {"<unknown>"}
    return {instruction.reg_name(register) for register in written}


def _why_not_skippable(instruction: capstone.CsInsn, protected: set[str]) -> str | None:
    """Reason the probe cannot be moved past this instruction, or None when skipping it is harmless."""
    if instruction.mnemonic in _UNSAFE_MNEMONICS or instruction.mnemonic.startswith(("rep", "lock")):
        return f"'{instruction.mnemonic}' has side effects"
    if _CONTROL_FLOW_GROUPS & set(instruction.groups):
        return "it changes control flow"
    string_operation = any(part in instruction.mnemonic for part in ("stos", "movs", "cmps", "scas", "lods"))
    if instruction.prefix[0] == 0xF0 or string_operation:
        return "it is a locked or string instruction"
    written = _written_registers(instruction)
    if written & _REGISTER_ALIASES["rsp"] or "<unknown>" in written:
        return "it changes rsp"
    clobbered = written & protected
    if clobbered:
        return f"it writes {', '.join(sorted(clobbered))}, which the probe reads"
    for operand in instruction.operands:
        if operand.type == x86_const.X86_OP_MEM and operand.access & capstone.CS_AC_WRITE:
            return "it writes memory"
    return None


def _decode(code: bytes, address: int) -> list[_Decoded]:
    decoded = []
    for instruction in _disassembler().disasm(code, address):
        text = f"{instruction.mnemonic} {instruction.op_str}".strip()
        decoded.append(_Decoded(instruction.address, instruction.size, bytes(instruction.bytes), text,
                                instruction))
    return decoded


def direct_targets(instructions: Iterable[_Decoded]) -> list[tuple[int, int]]:
    """(source, target) of every direct branch/call, plus RIP-relative addresses (a computed goto's lea)."""
    targets = []
    for item in instructions:
        instruction = item.instruction
        is_transfer = bool({capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL} & set(instruction.groups))
        for operand in instruction.operands:
            if is_transfer and operand.type == x86_const.X86_OP_IMM:
                targets.append((item.address, operand.imm))
            elif operand.type == x86_const.X86_OP_MEM and operand.mem.base == x86_const.X86_REG_RIP:
                targets.append((item.address, item.address + item.size + operand.mem.disp))
    return targets


def _register_set(names: Iterable[str]) -> set[str]:
    protected: set[str] = set()
    for name in names:
        protected |= _REGISTER_ALIASES.get(name, {name})
    return protected


def choose_placement(function: str, code: bytes, entry_address: int, *,
                     needed_registers: Sequence[str] = SYSV_ARGUMENT_REGISTERS,
                     whole_function: bool = True, extra_code: Sequence[tuple[bytes, int]] = (),
                     max_skipped: int = MAX_SKIPPED_INSTRUCTIONS, nop5_fast_path: bool = True) -> Placement:
    """Pick the probe address for one function, given its machine code starting at its entry.

    code should hold the whole function (by symbol size) so every branch into the skipped range can be
    found; whole_function=False says it does not, and then the probe stays at the entry.
    extra_code holds other pieces that may jump back in (e.g. the function's .cold part).
    nop5_fast_path says whether the kernel optimises probes on 5-byte nops (kernel_has_nop5_fast_path()).
    """
    decoded = _decode(code, entry_address)
    if not decoded:
        return Placement(function, entry_address, entry_address, 0, "entry-single-step", "(undecodable)",
                         "(undecodable)", "single-step", True, None,
                         "the first instruction could not be decoded; the kernel will single-step it")
    first = decoded[0]
    first_class = _probe_class(first, nop5_fast_path)
    if first_class != "single-step":
        kind = "nop5" if first_class == "nop5" else "entry"
        return _at(function, first, first, kind, first_class, None, "the first instruction is emulated")

    def at_entry(why: str) -> Placement:
        return _at(function, first, first, "entry-single-step", "single-step", None, why)

    protected = _register_set(needed_registers)
    for index, candidate in enumerate(decoded[1:max_skipped + 1], start=1):
        blocker = _why_not_skippable(decoded[index - 1].instruction, protected)
        if blocker is not None:
            return at_entry(f"cannot move past '{decoded[index - 1].text}': {blocker}")
        candidate_class = _probe_class(candidate, nop5_fast_path)
        if candidate_class == "single-step":
            continue
        decoded_bytes = sum(item.size for item in decoded)
        if not whole_function or decoded_bytes < len(code):
            offset = candidate.address - entry_address
            return at_entry("the whole function could not be decoded, so branches into the skipped "
                            f"instructions cannot be ruled out (first emulated instruction at +{offset:#x})")
        pieces = list(decoded)
        for extra_bytes, extra_address in extra_code:
            pieces += _decode(extra_bytes, extra_address)
        for source, target in direct_targets(pieces):
            if entry_address < target <= candidate.address:
                return at_entry(f"the instruction at {source:#x} jumps to {target:#x}, inside the skipped "
                                "range, so a later probe could fire twice or not at all")
        skipped = ", ".join(f"'{item.text}'" for item in decoded[:index])
        kind = "nop5" if candidate_class == "nop5" else "emulated-later"
        reason = (f"skips {skipped} (no rsp change, no memory write, no branch, "
                  f"keeps {', '.join(needed_registers) or 'no registers'})")
        if candidate.instruction.group(capstone.CS_GRP_JUMP):
            reason += "; the probe fires before the branch, so it sees every call"
        return _at(function, first, candidate, kind, candidate_class, None, reason)
    return at_entry(f"no emulated instruction within {max_skipped} skippable instructions")


def _at(function: str, first: _Decoded, probe: _Decoded, kind: str, cost_class: str, misses: str | None,
        reason: str) -> Placement:
    # Every instruction we skip leaves rsp alone, so *rsp still holds the return address at the probe.
    return Placement(function=function, entry_address=first.address, probe_address=probe.address,
                     offset_from_entry=probe.address - first.address, kind=kind,
                     first_instruction=first.text, probe_instruction=probe.text, cost_class=cost_class,
                     uretprobe_ok=True, misses=misses, reason=reason)


def misses_after(code: bytes, entry_address: int, probe_address: int) -> str | None:
    """What a probe at probe_address would miss: calls that leave through a branch before it.

    Used to explain a hand-picked later address (e.g. free+9, after `je` that handles free(NULL)).
    """
    exits = []
    for item in _decode(code, entry_address):
        if item.address >= probe_address:
            break
        if item.instruction.group(capstone.CS_GRP_JUMP) or item.instruction.group(capstone.CS_GRP_RET):
            exits.append(f"calls that take '{item.text}' at +{item.address - entry_address:#x}")
    return "; ".join(exits) or None


def place_function(symbols: SymbolTable, binary: ElfFile, names: str | Sequence[str], *,
                   needed_registers: Sequence[str] = SYSV_ARGUMENT_REGISTERS) -> Placement:
    """Resolve a function (candidate names, clone suffixes allowed) and choose its probe address."""
    symbol = symbols.lookup(names)
    if symbol is None:
        wanted = names if isinstance(names, str) else ", ".join(names)
        hint = f" ({symbols.missing_debug_hint})" if symbols.missing_debug_hint else ""
        raise LookupError(f"no symbol {wanted} in {symbols.target_path}{hint}")
    return place_symbol(symbols, binary, symbol, needed_registers=needed_registers)


def place_symbol(symbols: SymbolTable, binary: ElfFile, symbol: Symbol, *,
                 needed_registers: Sequence[str] = SYSV_ARGUMENT_REGISTERS) -> Placement:
    if symbol.kind not in ("function", "notype"):
        raise ValueError(f"{symbol.name} is a {symbol.kind}, not a function")
    whole_function = symbol.size > 0
    try:
        code = binary.read_at_virtual_address(symbol.address, symbol.size if whole_function else 64)
    except ElfError as error:
        raise ElfError(f"cannot read the code of {symbol.name}: {error}") from error
    extra = []
    cold = symbols.lookup(symbol.name + ".cold", match_clones=False)
    if cold is not None and cold.size:
        extra.append((binary.read_at_virtual_address(cold.address, cold.size), cold.address))
    return choose_placement(symbol.name, code, symbol.address, needed_registers=needed_registers,
                            whole_function=whole_function, extra_code=extra,
                            nop5_fast_path=kernel_has_nop5_fast_path())
