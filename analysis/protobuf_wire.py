"""The protobuf wire format, just enough to write and read pprof's profile.proto without a dependency.

Encoding: every field is a key varint ``(field_number << 3) | wire_type`` followed by a varint (wire type 0)
or a length-prefixed byte string (wire type 2: strings, embedded messages, packed repeated scalars).
Negative int64 values are encoded as 10-byte two's-complement varints, as protobuf does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from arena_trace.tracer.leb128 import read_uleb128

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value} does not fit in 64 bits")
    output = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            output.append(low | 0x80)
        else:
            output.append(low)
            return bytes(output)


class MessageWriter:
    """Accumulates the fields of one message; nested messages are built separately and added as bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def _key(self, field_number: int, wire_type: int) -> None:
        self._buffer += encode_varint((field_number << 3) | wire_type)

    def varint(self, field_number: int, value: int, always: bool = False) -> MessageWriter:
        # proto3 omits scalar fields equal to their default (0).
        if value or always:
            self._key(field_number, VARINT)
            self._buffer += encode_varint(int(value))
        return self

    def boolean(self, field_number: int, value: bool) -> MessageWriter:
        return self.varint(field_number, 1 if value else 0)

    def length_delimited(self, field_number: int, payload: bytes) -> MessageWriter:
        self._key(field_number, LENGTH_DELIMITED)
        self._buffer += encode_varint(len(payload))
        self._buffer += payload
        return self

    def string(self, field_number: int, text: str) -> MessageWriter:
        return self.length_delimited(field_number, text.encode("utf-8"))

    def message(self, field_number: int, writer: MessageWriter) -> MessageWriter:
        return self.length_delimited(field_number, writer.to_bytes())

    def packed_varints(self, field_number: int, values: Iterable[int]) -> MessageWriter:
        payload = b"".join(encode_varint(int(value)) for value in values)
        if payload:
            self.length_delimited(field_number, payload)
        return self

    def to_bytes(self) -> bytes:
        return bytes(self._buffer)


def decode_varint(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it); a varint is an unsigned LEB128 of at most 10 bytes (ValueError otherwise)."""
    return read_uleb128(data, position, max_bytes=10)


def iterate_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a message; fixed-width values come back as bytes."""
    position = 0
    while position < len(data):
        key, position = decode_varint(data, position)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, position = decode_varint(data, position)
            yield field_number, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            length, position = decode_varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated length-delimited field")
            yield field_number, wire_type, data[position:position + length]
            position += length
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            yield field_number, wire_type, data[position:position + width]
            position += width
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_packed_varints(value: int | bytes) -> list[int]:
    """A repeated scalar field: packed (bytes) or a single unpacked element (int); both are legal on the wire."""
    if isinstance(value, int):
        return [value]
    numbers, position = [], 0
    while position < len(value):
        number, position = decode_varint(value, position)
        numbers.append(number)
    return numbers
