"""LEB128 numbers, as DWARF call-frame instructions and expressions encode them."""

from __future__ import annotations


class Truncated(ValueError):
    """The data ends inside a number."""


def read_uleb128(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it)."""
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise Truncated("truncated LEB128")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position


def read_sleb128(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it), sign-extended from the last byte's bit 6."""
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise Truncated("truncated LEB128")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, position
