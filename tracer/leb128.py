"""LEB128 numbers, as DWARF call-frame instructions and expressions encode them (protobuf's varint is the
unsigned form)."""

from __future__ import annotations


class Truncated(ValueError):
    """The data ends inside a number (or the number is longer than allowed)."""


def _read(data: bytes, position: int, max_bytes: int | None) -> tuple[int, int, int, int]:
    """(value bits, bit count, last byte, position after it)."""
    result = shift = 0
    start = position
    while True:
        if position >= len(data):
            raise Truncated("truncated LEB128")
        if max_bytes is not None and position - start >= max_bytes:
            raise Truncated(f"LEB128 longer than {max_bytes} bytes")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, shift, byte, position


def read_uleb128(data: bytes, position: int, max_bytes: int | None = None) -> tuple[int, int]:
    """(value, position after it)."""
    value, _shift, _last, position = _read(data, position, max_bytes)
    return value, position


def read_sleb128(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it), sign-extended from the last byte's bit 6."""
    value, shift, last, position = _read(data, position, None)
    return (value - (1 << shift) if last & 0x40 else value), position
