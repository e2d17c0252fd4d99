"""The trace's function table (``metadata["functions"]``) as lookup arrays indexed by function id.

Function ids are 1..255 (8 bits each in a packed path), so a 256-entry numpy array per attribute turns
"role of every event" into one vectorized take instead of a per-row Python lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ID_LIMIT = 256
# Role codes used in the lookup arrays; 0 means "not in the function table".
ROLES = ("", "api-alloc", "api-free", "alloc-internal", "free-internal", "batch", "consolidate", "grow",
         "arena-select", "lock-wait", "trim", "syscall")
ROLE_CODE = {role: code for code, role in enumerate(ROLES)}


@dataclass(frozen=True)
class FunctionInfo:
    function_id: int
    name: str
    kind: str  # function | syscall
    role: str
    tier: str
    allocator: str | None


class FunctionTable:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_id: dict[int, FunctionInfo] = {}
        self.names = np.array([f"#{index}" for index in range(ID_LIMIT)], dtype=object)
        self.role_codes = np.zeros(ID_LIMIT, dtype=np.int8)
        self.is_syscall = np.zeros(ID_LIMIT, dtype=bool)
        self.is_native = np.zeros(ID_LIMIT, dtype=bool)
        self.is_streamed = np.zeros(ID_LIMIT, dtype=bool)  # slow tier: every call is an event row
        for entry in entries:
            try:
                function_id = int(entry["id"])
            except (KeyError, TypeError, ValueError):
                continue  # a malformed entry must not make the whole report fail
            if not 0 < function_id < ID_LIMIT:
                continue
            info = FunctionInfo(function_id, str(entry.get("name", f"#{function_id}")),
                                str(entry.get("kind", "function")), str(entry.get("role", "")),
                                str(entry.get("tier", "")), entry.get("allocator"))
            self.by_id[function_id] = info
            self.names[function_id] = info.name
            self.role_codes[function_id] = ROLE_CODE.get(info.role, 0)
            self.is_syscall[function_id] = info.kind == "syscall" or info.role == "syscall"
            self.is_native[function_id] = info.allocator == "native"
            self.is_streamed[function_id] = entry.get("mode", "stream" if info.tier != "full" else "aggregate") \
                == "stream"

    def name(self, function_id: int) -> str:
        return str(self.names[int(function_id) & 0xFF]) if 0 <= int(function_id) < ID_LIMIT else f"#{function_id}"

    def ids_with_role(self, role: str) -> list[int]:
        return [info.function_id for info in self.by_id.values() if info.role == role]

    def id_of(self, name: str) -> int | None:
        return next((info.function_id for info in self.by_id.values() if info.name == name), None)

    def roles_of(self, function_ids: np.ndarray) -> np.ndarray:
        return self.role_codes[np.asarray(function_ids, dtype=np.intp) & 0xFF]


def path_bytes(paths: np.ndarray) -> list[np.ndarray]:
    """The 8 packed ancestor ids of each path, outermost first (0 = no ancestor at that level)."""
    values = np.asarray(paths, dtype=np.uint64)
    return [((values >> np.uint64(8 * level)) & np.uint64(0xFF)).astype(np.uint8) for level in range(8)]


def innermost_ancestor(paths: np.ndarray) -> np.ndarray:
    """Function id of the innermost enclosing call (the highest non-zero byte), 0 at top level."""
    result = np.zeros(len(paths), dtype=np.uint8)
    for level_ids in path_bytes(paths):
        result = np.where(level_ids != 0, level_ids, result)
    return result


def path_contains(paths: np.ndarray, function_ids: list[int]) -> np.ndarray:
    """True where any enclosing call is one of ``function_ids``."""
    result = np.zeros(len(paths), dtype=bool)
    if not function_ids:
        return result
    wanted = np.array(function_ids, dtype=np.uint8)
    for level_ids in path_bytes(paths):
        result |= np.isin(level_ids, wanted)
    return result
