"""What to attach: a declarative catalog per allocator, the event layout and the BPF C program."""

from arena_trace.probes.catalog import AllocatorCatalog
from arena_trace.probes.glibc import GLIBC
from arena_trace.probes.native_alloc import NATIVE

CATALOGS: dict[str, AllocatorCatalog] = {catalog.name: catalog for catalog in (GLIBC, NATIVE)}
