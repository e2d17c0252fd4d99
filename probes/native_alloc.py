"""Catalog of our own arena allocator (native_alloc/). Every traced entry starts with a 5-byte nop, which
the kernel's optimized uprobe path handles without a trap."""

from arena_trace.probes.catalog import AllocatorCatalog, Argument, FunctionSpec, Meaning, Role, Tier

RDI, RSI, RDX = "rdi", "rsi", "rdx"

NATIVE = AllocatorCatalog(
    name="native",
    library_patterns=(r"^libnative_alloc\.so(\.\d+)*$",),
    functions=(
        FunctionSpec("na_alloc_batch", ("na_alloc_batch",), Role.BATCH, Tier.SLOW,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.SIZE)), exported=True,
                     note="a thread cache refills N objects from the arena under its lock"),
        FunctionSpec("na_consolidate", ("na_consolidate",), Role.CONSOLIDATE, Tier.SLOW,
                     (Argument(RDI, Meaning.ARENA),), exported=True),
        FunctionSpec("na_grow", ("na_grow",), Role.GROW, Tier.SLOW,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.SIZE)), exported=True,
                     note="the arena maps a new chunk (this allocator's sysmalloc)"),
        FunctionSpec("na_lock_wait", ("na_lock_wait",), Role.LOCK_WAIT, Tier.SLOW,
                     (Argument(RDI, Meaning.ARENA),), exported=True,
                     note="called only when the arena mutex trylock failed; returns holding the lock"),
        FunctionSpec("na_reset", ("na_reset",), Role.TRIM, Tier.SLOW, (Argument(RDI, Meaning.ARENA),),
                     exported=True),
        FunctionSpec("na_alloc", ("na_alloc",), Role.API_ALLOC, Tier.FULL,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.SIZE)), returns=Meaning.POINTER,
                     exported=True, stack=False),
        FunctionSpec("na_free", ("na_free",), Role.API_FREE, Tier.FULL,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.POINTER)), exported=True, stack=False),
    ),
)
