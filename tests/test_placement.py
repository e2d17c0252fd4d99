import os

import pytest
from arena_trace.tracer.elf_file import open_elf
from arena_trace.tracer.placement import (
    choose_placement,
    emulation_class,
    kernel_has_nop5_fast_path,
    misses_after,
    place_function,
)
from arena_trace.tracer.symbols import load_symbol_table

ENTRY = 0x1000
RET = "c3"


def place(hex_code: str, **options):
    return choose_placement("f", bytes.fromhex(hex_code), ENTRY, **options)


@pytest.mark.parametrize(("hex_bytes", "mnemonic", "expected"), [
    ("4154", "push", "emulated"),  # push r12
    ("55", "push", "emulated"),
    ("0f1f440000", "nop", "nop5"),
    ("90", "nop", "emulated"),
    ("f390", "pause", "single-step"),
    ("eb00", "jmp", "emulated"),
    ("e800000000", "call", "emulated"),
    ("7400", "je", "emulated"),
    ("0f8400000000", "je", "emulated"),
    ("66e90000", "jmp", "single-step"),  # 0x66-prefixed branches are refused by the kernel
    ("4885ff", "test", "single-step"),
    ("f30f1efa", "endbr64", "single-step"),
    ("4c50", "push", "single-step"),  # REX other than 41
])
def test_emulation_class(hex_bytes, mnemonic, expected) -> None:
    assert emulation_class(bytes.fromhex(hex_bytes), mnemonic) == expected


def test_push_at_entry() -> None:
    placement = place("4154" + "55" + RET)
    assert placement.kind == "entry" and placement.offset_from_entry == 0
    assert placement.cost_class == "emulated" and placement.uretprobe_ok and placement.misses is None


def test_nop5_at_entry() -> None:
    placement = place("0f1f440000" + "55" + RET)
    assert placement.kind == "nop5" and placement.cost_class == "nop5" and placement.offset_from_entry == 0


def test_nop5_without_kernel_fast_path_is_emulated() -> None:
    placement = place("0f1f440000" + RET, nop5_fast_path=False)
    assert placement.kind == "entry" and placement.cost_class == "emulated"
    assert kernel_has_nop5_fast_path("6.18.44-custom") and not kernel_has_nop5_fast_path("6.1.0-26-amd64")


def test_nop5_crossing_a_page_is_only_emulated() -> None:
    placement = choose_placement("f", bytes.fromhex("0f1f440000c3"), 0x1FFE)
    assert placement.cost_class == "emulated" and placement.kind == "entry"


def test_endbr64_then_nop5() -> None:
    placement = place("f30f1efa" + "0f1f440000" + "55" + RET)
    assert placement.kind == "nop5" and placement.offset_from_entry == 4 and placement.uretprobe_ok


def test_test_then_je_places_at_the_branch() -> None:
    # free: test rdi,rdi ; je +1 ; push rbp ; ret ; ret
    placement = place("4885ff" + "7402" + "55" + RET + RET)
    assert placement.kind == "emulated-later" and placement.offset_from_entry == 3
    assert placement.probe_instruction.startswith("je") and placement.misses is None
    assert placement.cost_class == "emulated" and placement.uretprobe_ok
    code = bytes.fromhex("4885ff" + "7402" + "55" + RET + RET)
    assert "je" in misses_after(code, ENTRY, ENTRY + 5)
    assert misses_after(code, ENTRY, ENTRY + 3) is None


def test_lock_wait_shape() -> None:
    # mov eax,[rdi] ; cmp eax,2 ; je +0 ; ret
    placement = place("8b07" + "83f802" + "7400" + RET)
    assert placement.offset_from_entry == 5 and placement.kind == "emulated-later"


def test_sub_rsp_stops() -> None:
    placement = place("4883ec18" + "55" + RET)
    assert placement.kind == "entry-single-step" and placement.cost_class == "single-step"
    assert "rsp" in placement.reason


def test_argument_register_write_stops_unless_not_needed() -> None:
    code = "31ff" + "55" + RET  # xor edi,edi ; push rbp
    assert place(code).kind == "entry-single-step"
    assert place(code, needed_registers=("rsi",)).offset_from_entry == 2


def test_memory_write_stops() -> None:
    assert place("c60700" + "55" + RET).kind == "entry-single-step"  # mov byte [rdi],0


def test_syscall_stops() -> None:
    assert place("b80c000000" + "0f05" + "55" + RET).kind == "entry-single-step"


def test_branch_into_skipped_range_keeps_entry() -> None:
    # test rdi,rdi ; test rsi,rsi ; push rbp ; jmp back to +3 (inside the skipped range)
    placement = place("4885ff" + "4885f6" + "55" + "ebf9" + RET)
    assert placement.kind == "entry-single-step" and "jumps" in placement.reason


def test_branch_to_the_placement_keeps_entry() -> None:
    # test rdi,rdi ; push rbp ; jmp to +3 (the push itself)
    placement = place("4885ff" + "55" + "ebfc" + RET)
    assert placement.kind == "entry-single-step"


def test_partial_code_keeps_entry() -> None:
    assert place("4885ff" + "55", whole_function=False).kind == "entry-single-step"


def test_undecodable() -> None:
    placement = place("ffff")
    assert placement.kind == "entry-single-step" and placement.cost_class == "single-step"


LIBC = next((path for path in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
             if os.path.exists(path)), None)


@pytest.fixture(scope="module")
def libc():
    if LIBC is None:
        pytest.skip("needs the system libc")
    table = load_symbol_table(LIBC)
    if not table.has_debug_symbols:
        pytest.skip(f"needs libc debug symbols: {table.missing_debug_hint}")
    with open_elf(LIBC) as binary:
        yield table, binary


def test_libc_malloc_at_entry(libc) -> None:
    placement = place_function(*libc, "malloc")
    assert placement.kind == "entry" and placement.probe_instruction.startswith("push")


def test_libc_free_not_at_entry_and_sees_free_null(libc) -> None:
    placement = place_function(*libc, "free")
    assert placement.offset_from_entry > 0 and placement.cost_class != "single-step"
    assert placement.misses is None and placement.uretprobe_ok


@pytest.mark.parametrize("name", ["_int_malloc", "__lll_lock_wait_private", "_int_free", "sysmalloc",
                                  "malloc_consolidate", "arena_get2"])
def test_libc_internals_not_single_stepped(libc, name) -> None:
    placement = place_function(*libc, name)
    assert placement.cost_class != "single-step", placement.reason
    symbol = libc[0].lookup(name)
    assert symbol.address <= placement.probe_address < symbol.end


def test_libc_unknown_function(libc) -> None:
    with pytest.raises(LookupError):
        place_function(*libc, "no_such_function_here")
