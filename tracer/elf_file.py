"""Safe, small wrapper over pyelftools for the few things the tracer needs from an ELF file.

Binaries come from the traced process (possibly from inside a container), so they are untrusted: every
pyelftools failure is turned into one ElfError with a one-line message, and section/segment extents are
checked against the file size before anything is read.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Section

DEFAULT_DEBUG_DIRECTORY = "/usr/lib/debug"
# Sections larger than this are treated as corrupt rather than read into memory.
MAX_SECTION_BYTES = 512 * 1024 * 1024
PT_LOAD = "PT_LOAD"


class ElfError(Exception):
    """The file is not a usable ELF file; the message is one line, fit for the user."""


@dataclass(frozen=True)
class LoadSegment:
    virtual_address: int
    file_offset: int
    file_size: int
    memory_size: int
    executable: bool


@dataclass(frozen=True)
class DebugLink:
    name: str
    crc: int


@dataclass(frozen=True)
class DebugFileLookup:
    """Where the separate debug file was found, or every place that was tried."""

    path: str | None
    method: str | None  # "build-id" or "debuglink"
    tried: tuple[str, ...]
    problems: tuple[str, ...]  # candidates that existed but were rejected, with why

    @property
    def found(self) -> bool:
        return self.path is not None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class ElfFile:
    """One open ELF file. Use as a context manager, or call close()."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self._stream: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as error:
            raise ElfError(f"{self.path}: cannot open: {error.strerror}") from error
        try:
            self.file_size = os.fstat(self._stream.fileno()).st_size
            if self.file_size < 64:
                raise ElfError(f"{self.path}: too small to be an ELF file ({self.file_size} bytes)")
            if self._stream.read(4) != b"\x7fELF":
                raise ElfError(f"{self.path}: not an ELF file (bad magic)")
            self._stream.seek(0)
            self._elf = self._guard(lambda: ELFFile(self._stream), "header")
            if self._elf["e_type"] == "ET_NONE":
                raise ElfError(f"{self.path}: ELF header has no file type (e_type 0)")
            self.segments = self._guard(self._read_load_segments, "program headers")
            self._sections = self._guard(self._read_sections, "section headers")
        except BaseException:
            self._stream.close()
            raise

    def _guard(self, action, what: str):  # noqa: ANN001, ANN202 - thin wrapper, types follow the action
        try:
            return action()
        except ElfError:
            raise
        except Exception as error:  # pyelftools raises many unrelated types on corrupt input
            raise ElfError(f"{self.path}: corrupt {what}: {_one_line(error)}") from error

    def _read_load_segments(self) -> tuple[LoadSegment, ...]:
        segments = []
        for segment in self._elf.iter_segments():
            if segment["p_type"] != PT_LOAD:
                continue
            if segment["p_offset"] + segment["p_filesz"] > self.file_size:
                offset = segment["p_offset"]
                raise ElfError(f"{self.path}: PT_LOAD at offset {offset:#x} runs past the file end")
            segments.append(LoadSegment(
                virtual_address=segment["p_vaddr"],
                file_offset=segment["p_offset"],
                file_size=segment["p_filesz"],
                memory_size=segment["p_memsz"],
                executable=bool(segment["p_flags"] & 1),
            ))
        return tuple(segments)

    def _read_sections(self) -> dict[str, Section]:
        sections: dict[str, Section] = {}
        for section in self._elf.iter_sections():
            has_bytes = section["sh_type"] != "SHT_NOBITS" and section["sh_size"] > 0
            end = section["sh_offset"] + section["sh_size"]
            if has_bytes and (section["sh_size"] > MAX_SECTION_BYTES or end > self.file_size):
                # Corrupt or truncated (a debug file copied half-way): refuse it rather than read garbage.
                raise ElfError(f"{self.path}: section {section.name!r} runs past the end of the file")
            sections.setdefault(section.name, section)
        return sections

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exception_info: object) -> None:
        self.close()

    @property
    def elf_type(self) -> str:
        return self._elf["e_type"]

    @property
    def machine(self) -> str:
        return self._elf["e_machine"]

    @property
    def is_64_bit(self) -> bool:
        return self._elf.elfclass == 64

    @property
    def little_endian(self) -> bool:
        return self._elf.little_endian

    def has_section(self, name: str) -> bool:
        return name in self._sections

    def section_names(self) -> list[str]:
        return list(self._sections)

    def section_bounds(self, name: str) -> tuple[int, int] | None:
        """(address, size) of a section, for checking which section a symbol lives in."""
        section = self._sections.get(name)
        if section is None:
            return None
        return section["sh_addr"], section["sh_size"]

    def section_name_at_index(self, index: int) -> str:
        try:
            return self._elf.get_section(index).name
        except Exception:  # out-of-range indices are common in hand-made or corrupt files
            return ""

    def section_index_names(self) -> list[str]:
        return self._guard(lambda: [section.name for section in self._elf.iter_sections()], "section headers")

    def section_data(self, name: str) -> bytes:
        section = self._sections.get(name)
        if section is None or section["sh_type"] == "SHT_NOBITS":
            return b""
        return self._guard(section.data, f"section {name}")

    def section_link_data(self, name: str) -> bytes:
        """Data of the section that `name` links to (the string table of a symbol table)."""
        section = self._sections.get(name)
        if section is None:
            return b""
        linked = self._guard(lambda: self._elf.get_section(section["sh_link"]), f"link of {name}")
        return self._guard(linked.data, f"section {linked.name}")

    @property
    def build_id(self) -> str | None:
        for note in self._iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                return str(note["n_desc"])
        return None

    def _iter_notes(self) -> Iterator[dict]:
        for name, section in self._sections.items():
            if section["sh_type"] == "SHT_NOTE" and name.startswith(".note"):
                yield from self._guard(lambda section=section: list(section.iter_notes()), f"note {name}")

    @property
    def debuglink(self) -> DebugLink | None:
        data = self.section_data(".gnu_debuglink")
        end = data.find(b"\0")
        if end <= 0:
            return None
        # The CRC follows the NUL-terminated name, padded to a 4-byte boundary.
        crc_offset = (end + 4) & ~3
        if crc_offset + 4 > len(data):
            return None
        byte_order = "little" if self.little_endian else "big"
        name = data[:end].decode("utf-8", errors="replace")
        if "/" in name or name in (".", ".."):
            return None  # a debuglink is a bare file name; anything else could escape the search directories
        return DebugLink(name=name, crc=int.from_bytes(data[crc_offset:crc_offset + 4], byte_order))

    def virtual_address_to_file_offset(self, virtual_address: int) -> int:
        for segment in self.segments:
            if segment.virtual_address <= virtual_address < segment.virtual_address + segment.file_size:
                return virtual_address - segment.virtual_address + segment.file_offset
        raise ElfError(f"{self.path}: address {virtual_address:#x} is not in any loaded file-backed segment")

    def file_offset_to_virtual_address(self, file_offset: int) -> int:
        for segment in self.segments:
            if segment.file_offset <= file_offset < segment.file_offset + segment.file_size:
                return file_offset - segment.file_offset + segment.virtual_address
        raise ElfError(f"{self.path}: file offset {file_offset:#x} is not in any PT_LOAD segment")

    def read_at_virtual_address(self, virtual_address: int, size: int) -> bytes:
        """Bytes of the file image at an address, clipped to the end of its segment."""
        file_offset = self.virtual_address_to_file_offset(virtual_address)
        segment = next(s for s in self.segments
                       if s.file_offset <= file_offset < s.file_offset + s.file_size)
        size = max(0, min(size, segment.file_offset + segment.file_size - file_offset))
        self._stream.seek(file_offset)
        return self._stream.read(size)

    @property
    def pyelftools(self) -> ELFFile:
        """The underlying pyelftools object, for DWARF access."""
        return self._elf


def open_elf(path: str | os.PathLike[str]) -> ElfFile:
    return ElfFile(path)


def file_crc32(path: str | os.PathLike[str]) -> int:
    """The CRC that .gnu_debuglink records: plain zlib CRC-32 of the whole file."""
    crc = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def build_id_path(debug_directory: str, build_id: str) -> str:
    return os.path.join(debug_directory, ".build-id", build_id[:2], build_id[2:] + ".debug")


def _debug_directories(root_prefix: str, extra_directories: Iterable[str], default_directory: str
                       ) -> list[str]:
    """Caller's directories first, then the target's own /usr/lib/debug, then the host's."""
    directories = [str(directory) for directory in extra_directories]
    if root_prefix:
        directories.append(root_prefix.rstrip("/") + DEFAULT_DEBUG_DIRECTORY)
    directories.append(default_directory)
    return list(dict.fromkeys(directories))


def _build_id_of(path: str) -> str | None:
    with open_elf(path) as candidate:
        return candidate.build_id


def find_debug_file(binary: ElfFile, target_path: str | None = None, root_prefix: str = "",
                    debug_directories: Iterable[str] = (),
                    default_debug_directory: str = DEFAULT_DEBUG_DIRECTORY) -> DebugFileLookup:
    """Find the separate debug file the way gdb does: by build-id, then by .gnu_debuglink with its CRC.

    target_path is the binary's path as the target process sees it (used for /usr/lib/debug/<dir>/);
    binary.path is where we can open it (e.g. under /proc/PID/root, which is also root_prefix).
    default_debug_directory is the host's /usr/lib/debug; tests point it elsewhere.
    """
    tried: list[str] = []
    problems: list[str] = []
    directories = _debug_directories(root_prefix, debug_directories, default_debug_directory)
    build_id = binary.build_id

    if build_id:
        for directory in directories:
            candidate = build_id_path(directory, build_id)
            tried.append(candidate)
            if not os.path.isfile(candidate):
                continue
            try:
                found_id = _build_id_of(candidate)
            except ElfError as error:
                problems.append(str(error))
                continue
            if found_id != build_id:
                problems.append(f"{candidate}: build-id {found_id} does not match {build_id}")
                continue
            return DebugFileLookup(candidate, "build-id", tuple(tried), tuple(problems))

    link = binary.debuglink
    if link is not None:
        binary_directory = os.path.dirname(binary.path)
        target_directory = os.path.dirname(target_path or binary.path)
        candidates = [os.path.join(binary_directory, link.name),
                      os.path.join(binary_directory, ".debug", link.name)]
        candidates += [os.path.join(directory + target_directory, link.name) for directory in directories]
        for candidate in dict.fromkeys(candidates):
            tried.append(candidate)
            if not os.path.isfile(candidate) or os.path.samefile(candidate, binary.path):
                continue
            if file_crc32(candidate) != link.crc:
                problems.append(f"{candidate}: CRC does not match the .gnu_debuglink of {binary.path}")
                continue
            try:
                found_id = _build_id_of(candidate)
            except ElfError as error:
                problems.append(str(error))
                continue
            if build_id and found_id and found_id != build_id:
                problems.append(f"{candidate}: build-id {found_id} does not match {build_id}")
                continue
            return DebugFileLookup(candidate, "debuglink", tuple(tried), tuple(problems))

    return DebugFileLookup(None, None, tuple(tried), tuple(problems))


def is_elf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(4) == b"\x7fELF"
    except OSError:
        return False


__all__ = [
    "DebugFileLookup", "DebugLink", "ElfError", "ElfFile", "LoadSegment", "build_id_path", "file_crc32",
    "find_debug_file", "is_elf", "open_elf",
]
