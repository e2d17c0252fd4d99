import os
import random
import shutil
from pathlib import Path

import pytest
from arena_trace.tracer.elf_file import ElfError, build_id_path, file_crc32, find_debug_file, open_elf
from arena_trace.tracer.symbols import build_symbol_table, load_symbol_table

LIBC_CANDIDATES = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
LIBC = next((path for path in LIBC_CANDIDATES if os.path.exists(path)), None)


def _libc_debug_available() -> bool:
    if LIBC is None:
        return False
    with open_elf(LIBC) as binary:
        return find_debug_file(binary).found


needs_libc_debug = pytest.mark.skipif(not _libc_debug_available(), reason="needs libc with libc6-dbg")


@pytest.mark.parametrize("content", [b"", b"\x7fELF", b"\x7fELF\x02\x01\x01" + b"\0" * 57,
                                     bytes(random.Random(7).randrange(256) for _ in range(4096))])
def test_malformed_files_raise_elf_error(tmp_path, content) -> None:
    path = tmp_path / "bad.so"
    path.write_bytes(content)
    with pytest.raises(ElfError) as raised:
        open_elf(path)
    assert "\n" not in str(raised.value)


def test_missing_file_raises_elf_error(tmp_path) -> None:
    with pytest.raises(ElfError):
        open_elf(tmp_path / "absent")


@pytest.mark.skipif(LIBC is None, reason="needs the system libc")
def test_truncated_libc_raises_elf_error(tmp_path) -> None:
    data = Path(LIBC).read_bytes()
    for cut in (100, len(data) // 2, len(data) - 100):
        path = tmp_path / f"libc-{cut}.so"
        path.write_bytes(data[:cut])
        with pytest.raises(ElfError):
            open_elf(path)


@pytest.mark.skipif(LIBC is None, reason="needs the system libc")
def test_missing_debug_file_reports_the_fix(tmp_path) -> None:
    # Search only empty directories so the host's libc6-dbg cannot be found.
    copy = tmp_path / "libc.so.6"
    shutil.copy(LIBC, copy)
    table = build_symbol_table(str(copy), target_path="/lib/x86_64-linux-gnu/libc.so.6",
                               root_prefix=str(tmp_path / "root"), debug_directories=[str(tmp_path)],
                               default_debug_directory=str(tmp_path / "debug"))
    assert not table.has_debug_symbols
    assert table.debug_lookup.tried
    if os.path.exists("/etc/debian_version"):
        assert table.missing_debug_hint == "apt-get install libc6-dbg"
    assert table.lookup("_int_malloc") is None
    assert table.lookup("malloc") is not None  # .dynsym still works


@needs_libc_debug
def test_debug_file_found_by_build_id_and_in_extra_directory(tmp_path) -> None:
    with open_elf(LIBC) as binary:
        build_id = binary.build_id
        lookup = find_debug_file(binary)
        assert lookup.method == "build-id"
        assert lookup.path == build_id_path("/usr/lib/debug", build_id)
        extra = tmp_path / ".build-id" / build_id[:2]
        extra.mkdir(parents=True)
        shutil.copy(lookup.path, extra / (build_id[2:] + ".debug"))
        assert find_debug_file(binary, debug_directories=[str(tmp_path)]).path.startswith(str(tmp_path))
        link = binary.debuglink
        assert link is not None and file_crc32(lookup.path) == link.crc


@needs_libc_debug
def test_debuglink_with_crc(tmp_path) -> None:
    with open_elf(LIBC) as binary:
        debug_path = find_debug_file(binary).path
        link = binary.debuglink
    copy = tmp_path / "libc.so.6"
    shutil.copy(LIBC, copy)
    (tmp_path / ".debug").mkdir()
    shutil.copy(debug_path, tmp_path / ".debug" / link.name)
    with open_elf(copy) as binary:
        lookup = find_debug_file(binary, default_debug_directory=str(tmp_path / "none"))
    assert lookup.method == "debuglink" and lookup.path == str(tmp_path / ".debug" / link.name)
    # A debug file whose CRC does not match is rejected.
    (tmp_path / ".debug" / link.name).write_bytes(Path(LIBC).read_bytes())
    with open_elf(copy) as binary:
        lookup = find_debug_file(binary, default_debug_directory=str(tmp_path / "none"))
    assert not lookup.found and any("CRC" in problem for problem in lookup.problems)


@needs_libc_debug
def test_libc_allocator_symbols() -> None:
    table = load_symbol_table(LIBC)
    assert table.has_debug_symbols and table.missing_debug_hint is None
    for name in ["malloc", "free", "_int_malloc", "_int_free", "sysmalloc", "malloc_consolidate",
                 "arena_get2", "__lll_lock_wait_private"]:
        symbol = table.lookup(name)
        assert symbol is not None and symbol.kind == "function", name
        assert symbol.section == ".text" and symbol.size > 16, name
    main_arena = table.lookup("main_arena")
    assert main_arena.kind == "object" and main_arena.binding == "local" and main_arena.section == ".data"
    assert main_arena.size > 1000
    assert table.lookup("__curbrk").kind == "object"
    assert table.lookup(["no_such_function", "free"]).name == "free"


@needs_libc_debug
def test_clone_suffixes_and_symbolization() -> None:
    table = load_symbol_table(LIBC)
    systrim = table.lookup(["systrim"])
    assert systrim.name.startswith("systrim.") and systrim.base_name == "systrim"
    assert table.lookup("systrim", match_clones=False) is None
    malloc = table.lookup("malloc")
    assert table.symbolize(malloc.address + 5) == ("malloc", 5)
    start_main = table.lookup("__libc_start_main")
    assert table.symbolize(start_main.address)[0] == "__libc_start_main"
    main_arena = table.lookup("main_arena")
    assert table.symbolize(main_arena.address + 0x870) == ("main_arena", 0x870)
    assert load_symbol_table(LIBC) is table  # cached by build-id


@needs_libc_debug
def test_inlined_entry_from_dwarf() -> None:
    table = load_symbol_table(LIBC)
    arena_get2 = table.lookup("arena_get2")
    entries = table.inlined_entries("_int_new_arena", "arena_get2")
    assert len(entries) == 1
    assert arena_get2.address < entries[0].entry_address < arena_get2.end
    assert entries[0].ranges[0][0] <= entries[0].entry_address


@needs_libc_debug
def test_source_line() -> None:
    table = load_symbol_table(LIBC)
    file_name, line = table.source_line(table.lookup("free").address)
    assert file_name.endswith("malloc.c") and line > 3000
