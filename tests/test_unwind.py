"""Tests for tracer/cfi.py and tracer/unwind.py against real stacks of a frame-pointer-less program.

tests/helpers/stackdump.c is built with gcc -O2 -g -fomit-frame-pointer; it dumps its registers, its
stack and its /proc/self/maps from a known call chain, which is what a BPF probe would capture. The
unwound stacks are symbolized with .symtab and compared frame by frame with the chain the program took.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as strategies

from tracer.cfi import (
    REGISTER_NAMES,
    REGISTER_NUMBERS,
    RULE_EXPRESSION,
    RULE_OFFSET,
    RULE_REGISTER,
    RULE_SAME_VALUE,
    RULE_UNDEFINED,
    RULE_VAL_EXPRESSION,
    RULE_VAL_OFFSET,
    CfiRow,
    CfiTable,
)
from tracer.unwind import (
    StackSnapshot,
    Unwinder,
    UnwindModule,
    UnwindResult,
    _Memory,
    evaluate_expression,
    load_bias_for_mapping,
    modules_from_maps,
)

HELPER_SOURCE = Path(__file__).parent / "helpers" / "stackdump.c"
LIBC_PATH = "/usr/lib/x86_64-linux-gnu/libc.so.6"
UPROBE_TRAMPOLINE = 0x7FFFFFFFE000
ALL_STATUSES = {"complete", "truncated-snapshot", "no-cfi", "no-module", "bad-cfa", "max-depth"}
LIBC_START = ["main", "__libc_start_call_main", "__libc_start_main", "_start"]
THREAD_START = ["worker", "start_thread", "__clone3"]

requires_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the helper")


# --- helper program -------------------------------------------------------------------------------


@dataclass
class Dump:
    registers: dict[str, int]
    stack: bytes
    maps: str

    def snapshot(self, stack: bytes | None = None, shadow: dict[int, int] | None = None) -> StackSnapshot:
        return StackSnapshot(
            registers=dict(self.registers),
            stack_base=self.registers["rsp"],
            stack=self.stack if stack is None else stack,
            return_address_shadow=shadow or {},
        )


def read_dump(path: Path) -> Dump:
    data = path.read_bytes()
    assert data[:4] == b"ATSD", "not a stackdump file"
    (version,) = struct.unpack_from("<I", data, 4)
    assert version == 1
    values = struct.unpack_from("<8Q", data, 8)
    names = ["rip", "rsp", "rbp", "rbx", "r12", "r13", "r14", "r15"]
    position = 8 + 64
    (stack_length,) = struct.unpack_from("<Q", data, position)
    position += 8
    stack = data[position : position + stack_length]
    position += stack_length
    (maps_length,) = struct.unpack_from("<Q", data, position)
    position += 8
    maps = data[position : position + maps_length].decode()
    return Dump(registers=dict(zip(names, values, strict=True)), stack=stack, maps=maps)


def build_helper(directory: Path, name: str, extra_flags: list[str]) -> Path:
    binary = directory / name
    command = ["gcc", "-O2", "-g", "-fomit-frame-pointer", "-pthread", *extra_flags, "-o", str(binary)]
    subprocess.run([*command, str(HELPER_SOURCE)], check=True)
    return binary


@pytest.fixture(scope="session")
def helper_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the helper")
    return build_helper(tmp_path_factory.mktemp("stackdump"), "stackdump", [])


def run_helper(binary: Path, mode: str, depth: int, capture_bytes: int = 65536) -> Dump:
    output = binary.parent / f"dump-{binary.name}-{mode}-{depth}-{capture_bytes}.bin"
    subprocess.run([str(binary), mode, str(depth), str(output), str(capture_bytes)], check=True, timeout=30)
    return read_dump(output)


# --- a tiny symbolizer ----------------------------------------------------------------------------


class Symbolizer:
    """Names for pcs from .symtab/.dynsym of each module and of its debug file."""

    def __init__(self, unwinder: Unwinder) -> None:
        self.unwinder = unwinder
        self._symbols: dict[str, list[tuple[int, int, str]]] = {}

    def _symbols_of(self, module: UnwindModule) -> list[tuple[int, int, str]]:
        if module.path not in self._symbols:
            symbols: list[tuple[int, int, str]] = []
            for path in (module.path, module.debug_path):
                if not path:
                    continue
                with open(path, "rb") as stream:
                    elf = ELFFile(stream)
                    for section_name in (".symtab", ".dynsym"):
                        section = elf.get_section_by_name(section_name)
                        if section is None or section["sh_type"] == "SHT_NOBITS":
                            continue
                        for symbol in section.iter_symbols():
                            if symbol["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE") and symbol["st_value"]:
                                name = symbol.name.split("@")[0]
                                symbols.append((symbol["st_value"], symbol["st_size"], name))
            self._symbols[module.path] = symbols
        return self._symbols[module.path]

    def names(self, pc: int, is_return_address: bool) -> set[str]:
        module = self.unwinder.module_for(pc)
        if module is None:
            return {"?"}
        # A return address may be one past the end of a function that ends in a call.
        address = pc - module.load_bias - (1 if is_return_address else 0)
        symbols = self._symbols_of(module)
        names = {name for start, size, name in symbols if size and start <= address < start + size}
        if not names:
            # Size-0 assembler symbols such as __restore_rt, whose FDE starts one byte early.
            names = {name for start, size, name in symbols if not size and address - 16 < start <= address + 1}
        return names or {"?"}

    def frames(self, result: UnwindResult) -> list[set[str]]:
        return [self.names(pc, index > 0) for index, pc in enumerate(result.pcs)]


def assert_frames(frames: list[set[str]], expected: list[str]) -> None:
    readable = " <- ".join("/".join(sorted(names)) for names in frames)
    assert len(frames) == len(expected), readable
    for index, (names, name) in enumerate(zip(frames, expected, strict=True)):
        assert name in names, f"frame {index}: expected {name}, got {sorted(names)}\n{readable}"


def unwind_dump(dump: Dump, **snapshot_arguments: object) -> tuple[UnwindResult, Symbolizer]:
    unwinder = Unwinder(modules_from_maps(dump.maps))
    result = unwinder.unwind(dump.snapshot(**snapshot_arguments))  # type: ignore[arg-type]
    return result, Symbolizer(unwinder)


def recursion_chain(depth: int) -> list[str]:
    return ["reach_leaf", *["recurse"] * (depth + 1), "outer_b", "outer_a"]


# --- complete stacks ------------------------------------------------------------------------------


@requires_gcc
@pytest.mark.parametrize("depth", [0, 3, 25])
def test_main_thread_stack_is_complete(helper_binary: Path, depth: int) -> None:
    dump = run_helper(helper_binary, "main", depth)
    result, symbolizer = unwind_dump(dump)
    assert result.status == "complete"
    assert_frames(symbolizer.frames(result), ["leaf", *recursion_chain(depth), *LIBC_START])


@requires_gcc
@pytest.mark.parametrize("depth", [0, 7])
def test_thread_stack_ends_at_clone3(helper_binary: Path, depth: int) -> None:
    dump = run_helper(helper_binary, "thread", depth)
    result, symbolizer = unwind_dump(dump)
    assert result.status == "complete"
    assert_frames(symbolizer.frames(result), ["leaf", *recursion_chain(depth), *THREAD_START])


@requires_gcc
def test_stack_through_glibc_qsort(helper_binary: Path) -> None:
    dump = run_helper(helper_binary, "qsort", 2)
    result, symbolizer = unwind_dump(dump)
    assert result.status == "complete"
    frames = symbolizer.frames(result)
    assert "leaf" in frames[0] and "compare_ints" in frames[1]
    # The comparator is called from glibc's merge sort, which recurses a data-dependent number of times.
    sorter_index = next(index for index, names in enumerate(frames) if "sort_through_libc" in names)
    glibc_frames = frames[2:sorter_index]
    assert glibc_frames, "no frames inside glibc"
    unwinder = symbolizer.unwinder
    for pc in result.pcs[2:sorter_index]:
        module = unwinder.module_for(pc)
        assert module is not None and Path(module.path).name == "libc.so.6"
    assert any("msort_with_tmp.part.0" in names or "msort_with_tmp" in names for names in glibc_frames)
    assert "__qsort_r" in glibc_frames[-1]
    assert_frames(frames[sorter_index:], ["sort_through_libc", *recursion_chain(2), *LIBC_START])


@requires_gcc
def test_stack_through_signal_frame(helper_binary: Path) -> None:
    dump = run_helper(helper_binary, "signal", 4)
    result, symbolizer = unwind_dump(dump)
    assert result.status == "complete"
    assert_frames(
        symbolizer.frames(result),
        [
            "leaf",
            "on_signal",
            "__restore_rt",
            "__pthread_kill_implementation",
            "raise",
            *recursion_chain(4),
            *LIBC_START,
        ],
    )


@requires_gcc
def test_debug_frame_from_separate_debug_file(tmp_path: Path) -> None:
    """Without unwind tables the program's CFI lives only in .debug_frame of its debug file."""
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy is needed to split the debug file")
    binary = build_helper(tmp_path, "stackdump-nounwind", ["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"])
    debug_file = tmp_path / "stackdump-nounwind.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug_file)], check=True)
    subprocess.run(["objcopy", "--strip-debug", f"--add-gnu-debuglink={debug_file}", str(binary)], check=True)
    with open(binary, "rb") as stream:
        assert ELFFile(stream).get_section_by_name(".debug_frame") is None

    dump = run_helper(binary, "main", 2)
    modules = modules_from_maps(dump.maps)
    helper_modules = [module for module in modules if module.path == str(binary)]
    assert helper_modules and all(module.debug_path == str(debug_file) for module in helper_modules)

    result = Unwinder(modules).unwind(dump.snapshot())
    assert result.status == "complete"
    assert_frames(Symbolizer(Unwinder(modules)).frames(result), ["leaf", *recursion_chain(2), *LIBC_START])

    without_debug = [
        UnwindModule(module.path, module.start, module.end, module.load_bias, "no-debug", None)
        if module.path == str(binary)
        else module
        for module in modules
    ]
    stripped_result = Unwinder(without_debug).unwind(dump.snapshot())
    assert stripped_result.status == "no-cfi"
    assert stripped_result.pcs == result.pcs[:1]


# --- partial data ---------------------------------------------------------------------------------


@requires_gcc
@pytest.mark.parametrize("mode", ["main", "thread", "signal"])
def test_truncated_snapshot_gives_a_correct_prefix(helper_binary: Path, mode: str) -> None:
    dump = run_helper(helper_binary, mode, 12)
    full, _symbolizer = unwind_dump(dump)
    assert full.status == "complete"
    assert len(dump.stack) > 1024
    truncated, _symbolizer = unwind_dump(dump, stack=dump.stack[:1024])
    assert truncated.status == "truncated-snapshot"
    assert 1 < len(truncated.pcs) < len(full.pcs)
    assert truncated.pcs == full.pcs[: len(truncated.pcs)]


@requires_gcc
def test_max_depth_stops_the_walk(helper_binary: Path) -> None:
    dump = run_helper(helper_binary, "main", 6)
    full, _symbolizer = unwind_dump(dump)
    limited = Unwinder(modules_from_maps(dump.maps)).unwind(dump.snapshot(), max_frames=5)
    assert limited.status == "max-depth"
    assert limited.pcs == full.pcs[:5]


def return_address_slots(stack: bytes, stack_base: int, value: int) -> list[int]:
    """Addresses of the 8-byte aligned stack words equal to value."""
    return [
        stack_base + offset
        for offset in range(0, len(stack) - 7, 8)
        if int.from_bytes(stack[offset : offset + 8], "little") == value
    ]


@requires_gcc
def test_uretprobe_trampoline_is_replaced_from_the_shadow(helper_binary: Path) -> None:
    dump = run_helper(helper_binary, "main", 4)
    original, _symbolizer = unwind_dump(dump)
    assert original.status == "complete"
    # As if uretprobes sat on recurse (every level) and on main: the kernel overwrites each of their
    # return-address slots with the [uprobes] trampoline.
    hijacked_values = {original.pcs[3], original.pcs[-3]}
    stack = bytearray(dump.stack)
    shadow: dict[int, int] = {}
    for value in hijacked_values:
        for slot in return_address_slots(dump.stack, dump.registers["rsp"], value):
            offset = slot - dump.registers["rsp"]
            stack[offset : offset + 8] = UPROBE_TRAMPOLINE.to_bytes(8, "little")
            shadow[slot] = value
    assert len(shadow) >= 4

    without_shadow, _symbolizer = unwind_dump(dump, stack=bytes(stack))
    assert without_shadow.status == "no-module"
    assert without_shadow.pcs[-1] == UPROBE_TRAMPOLINE

    with_shadow, _symbolizer = unwind_dump(dump, stack=bytes(stack), shadow=shadow)
    assert with_shadow.status == "complete"
    assert with_shadow.pcs == original.pcs


@requires_gcc
def test_unknown_pc_reports_no_module(helper_binary: Path) -> None:
    dump = run_helper(helper_binary, "main", 0)
    registers = dict(dump.registers, rip=UPROBE_TRAMPOLINE)
    result = Unwinder(modules_from_maps(dump.maps)).unwind(
        StackSnapshot(registers=registers, stack_base=registers["rsp"], stack=dump.stack)
    )
    assert result == UnwindResult(pcs=[UPROBE_TRAMPOLINE], status="no-module")


# --- garbage never breaks the unwinder ------------------------------------------------------------

_GARBAGE_DUMP: dict[str, Dump] = {}


def _real_dump_for_fuzzing(binary: Path) -> Dump:
    if "dump" not in _GARBAGE_DUMP:
        _GARBAGE_DUMP["dump"] = run_helper(binary, "signal", 3)
    return _GARBAGE_DUMP["dump"]


@requires_gcc
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    registers=strategies.dictionaries(
        strategies.sampled_from(sorted(REGISTER_NUMBERS)),
        strategies.integers(min_value=0, max_value=(1 << 64) - 1),
    ),
    stack=strategies.binary(max_size=4096),
    base_choice=strategies.integers(min_value=0, max_value=(1 << 64) - 1),
    use_real_pc=strategies.booleans(),
    shadow=strategies.dictionaries(
        strategies.integers(min_value=0, max_value=(1 << 64) - 1),
        strategies.integers(min_value=0, max_value=(1 << 64) - 1),
        max_size=4,
    ),
)
def test_random_snapshots_never_raise(
    helper_binary: Path,
    registers: dict[str, int],
    stack: bytes,
    base_choice: int,
    use_real_pc: bool,
    shadow: dict[int, int],
) -> None:
    dump = _real_dump_for_fuzzing(helper_binary)
    if use_real_pc:
        # Real code addresses reach the CFI paths (including the signal frame's expressions).
        registers["rip"] = random.Random(base_choice).choice(
            [dump.registers["rip"], *Unwinder(modules_from_maps(dump.maps)).unwind(dump.snapshot()).pcs]
        )
    registers.setdefault("rsp", base_choice)
    snapshot = StackSnapshot(
        registers=registers, stack_base=registers["rsp"], stack=stack, return_address_shadow=shadow
    )
    result = Unwinder(modules_from_maps(dump.maps)).unwind(snapshot, max_frames=64)
    assert result.status in ALL_STATUSES
    assert len(result.pcs) <= 64


@requires_gcc
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=strategies.lists(
        strategies.tuples(strategies.integers(min_value=0), strategies.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=40,
    ),
)
def test_corrupted_real_snapshots_never_raise(helper_binary: Path, flips: list[tuple[int, int]]) -> None:
    dump = _real_dump_for_fuzzing(helper_binary)
    stack = bytearray(dump.stack)
    for position, value in flips:
        stack[position % len(stack)] = value
    result = Unwinder(modules_from_maps(dump.maps)).unwind(dump.snapshot(stack=bytes(stack)), max_frames=200)
    assert result.status in ALL_STATUSES
    assert len(result.pcs) <= 200


def test_malformed_snapshot_fields_do_not_raise() -> None:
    unwinder = Unwinder([])
    assert unwinder.unwind(StackSnapshot(registers={}, stack_base=0, stack=b"")).status == "bad-cfa"
    odd = StackSnapshot(registers={"rip": "x", "rsp": 5, "bogus": 1}, stack_base=5, stack=b"\0" * 8)  # type: ignore[dict-item]
    assert unwinder.unwind(odd).status == "bad-cfa"
    lonely = StackSnapshot(registers={"rip": 0x1000, "rsp": 0x2000}, stack_base=0x2000, stack=b"")
    assert unwinder.unwind(lonely) == UnwindResult(pcs=[0x1000], status="no-module")


# --- DWARF expressions and load bias --------------------------------------------------------------


def test_plt_cfa_expression() -> None:
    # The lazy PLT's CFA: rsp + 8 + ((rip & 15) >= 11 ? 8 : 0), as ld writes it.
    expression = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
    memory = _Memory(0, b"")
    for rip_low, expected_extra in [(0, 0), (10, 0), (11, 8), (15, 8)]:
        registers: list[int | None] = [None] * 17
        registers[7] = 0x7FFF0000
        registers[16] = 0x401020 + rip_low
        assert evaluate_expression(expression, registers, memory) == 0x7FFF0000 + 8 + expected_extra


def test_signal_frame_style_expression_reads_memory() -> None:
    # DW_OP_breg7 160; DW_OP_deref: the CFA of __restore_rt is the saved rsp in the ucontext.
    stack = bytearray(256)
    stack[160:168] = (0x12345678).to_bytes(8, "little")
    registers: list[int | None] = [None] * 17
    registers[7] = 0x1000
    expression = bytes([0x77, 0xA0, 0x01, 0x06])
    assert evaluate_expression(expression, registers, _Memory(0x1000, bytes(stack))) == 0x12345678


def test_load_bias_from_program_headers() -> None:
    loads = [(0, 0, 0x1000), (0x1000, 0x1000, 0x2000), (0x3000, 0x3000, 0x500)]
    assert load_bias_for_mapping(loads, 0x555555555000, 0x1000) == 0x555555554000
    # Non-PIE: the mapping sits at its link address.
    assert load_bias_for_mapping([(0, 0x400000, 0x1000), (0x1000, 0x401000, 0x800)], 0x401000, 0x1000) == 0


# --- the rule decoder against readelf -------------------------------------------------------------

_CFA_TEXT = re.compile(r"^(r\w+)([+-]\d+)$")


def parse_readelf_frames(text: str) -> list[tuple[int, int, list[tuple[int, dict[str, str]]]]]:
    """FDE ranges and their rows from `readelf --debug-dump=frames-interp`."""
    fdes: list[tuple[int, int, list[tuple[int, dict[str, str]]]]] = []
    columns: list[str] = []
    current: list[tuple[int, dict[str, str]]] | None = None
    for line in text.splitlines():
        header = re.search(r" FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", line)
        if header:
            current = []
            fdes.append((int(header.group(1), 16), int(header.group(2), 16), current))
            columns = []
            continue
        if " CIE " in line:
            current = None
            continue
        # Register rules print as "r9 (r9)"; glue them into one field.
        fields = re.sub(r"(r\d+) \((\w+)\)", r"\1(\2)", line).split()
        if not fields or current is None:
            continue
        if fields[0] == "LOC":
            columns = fields[1:]
        elif re.fullmatch(r"[0-9a-f]{16}", fields[0]) and columns:
            current.append((int(fields[0], 16), dict(zip(columns, fields[1:], strict=True))))
    return fdes


def rule_text(rule: tuple[int, object] | None) -> str:
    """Our rule in readelf's notation."""
    if rule is None or rule[0] == RULE_UNDEFINED:
        return "u"
    kind, operand = rule
    if kind == RULE_SAME_VALUE:
        return "s"
    if kind == RULE_OFFSET:
        return f"c{operand:+d}"
    if kind == RULE_VAL_OFFSET:
        return f"v{operand:+d}"
    if kind == RULE_REGISTER:
        source = int(operand)  # type: ignore[call-overload]
        return f"r{source}({REGISTER_NAMES[source]})"
    if kind == RULE_EXPRESSION:
        return "exp"
    assert kind == RULE_VAL_EXPRESSION
    return "vexp"


def cfa_text(row: CfiRow) -> str:
    if row.cfa_expression is not None:
        return "exp"
    return f"{REGISTER_NAMES[row.cfa_register]}{row.cfa_offset:+d}"


@pytest.mark.skipif(shutil.which("readelf") is None or not Path(LIBC_PATH).exists(), reason="needs readelf and glibc")
def test_decoded_rules_match_readelf_for_libc() -> None:
    # readelf exits 1 on libc.so.6 because it has a PT_INTERP it cannot name; the tables are still whole.
    output = subprocess.run(
        ["readelf", "--debug-dump=frames-interp", LIBC_PATH], check=False, capture_output=True, text=True
    ).stdout
    fdes = [fde for fde in parse_readelf_frames(output) if fde[2]]
    assert len(fdes) > 1000
    table = CfiTable(LIBC_PATH)
    generator = random.Random(20261125)
    register_numbers = dict(REGISTER_NUMBERS, ra=16)
    compared = 0
    # Every FDE with a signal frame or an expression, plus random ones, at random pcs inside them.
    special = [fde for fde in fdes if any("exp" in " ".join(row.values()) for _loc, row in fde[2])]
    chosen = special[:20] + generator.sample(fdes, 150)
    for start, end, rows in chosen:
        for pc in {start, end - 1, generator.randrange(start, end), generator.randrange(start, end)}:
            expected = [row for location, row in rows if location <= pc][-1]
            row = table.find_row(pc)
            assert row is not None, f"no row for {pc:#x}"
            assert cfa_text(row) == expected["CFA"], f"CFA at {pc:#x}"
            for column, text in expected.items():
                if column == "CFA":
                    continue
                ours = rule_text(row.rules.get(register_numbers[column]))
                assert ours == text, f"{column} at {pc:#x}: ours {ours}, readelf {text}"
            compared += 1
    assert compared > 300
    # The lookup decoded only the FDEs it was asked about, not the whole section.
    assert table.decoded_fde_count <= len(chosen) + 5


@pytest.mark.skipif(not Path(LIBC_PATH).exists(), reason="needs glibc")
def test_every_libc_fde_decodes() -> None:
    table = CfiTable(LIBC_PATH)
    decoded = table.eh_frame_fdes()
    assert len(decoded) > 1000
    assert all(fde.rows and fde.locations[0] == fde.start for fde in decoded)
    # _start-like end markers exist: __clone3's child part has its return address undefined.
    assert any(row.return_address_undefined for fde in decoded for row in fde.rows)
