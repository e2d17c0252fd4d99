"""glibc malloc (ptmalloc2) catalog. Facts checked on glibc 2.36 (Debian 12); addresses are resolved at
run time from the library and its build-id debug file, so other builds work when the names exist."""

from arena_trace.probes.catalog import AllocatorCatalog, Argument, FunctionSpec, Meaning, Role, Tier

RDI, RSI = "rdi", "rsi"

GLIBC = AllocatorCatalog(
    name="glibc",
    library_patterns=(r"^libc\.so\.6$", r"^libc-2\.\d+\.so$"),
    data_symbols=("main_arena",),
    debug_package="libc6-dbg",
    functions=(
        # Slow path: rare, streamed with exact latency and a stack.
        FunctionSpec("arena_get2", ("arena_get2",), Role.ARENA_SELECT, Tier.SLOW,
                     (Argument(RDI, Meaning.SIZE), Argument(RSI, Meaning.ARENA)), returns=Meaning.ARENA,
                     note="a thread without an arena picks, reuses or creates one (returns it locked)"),
        FunctionSpec("sysmalloc", ("sysmalloc",), Role.GROW, Tier.SLOW,
                     (Argument(RDI, Meaning.SIZE), Argument(RSI, Meaning.ARENA)), returns=Meaning.POINTER,
                     note="top chunk exhausted: grows the heap (brk, mprotect) or mmaps the request"),
        FunctionSpec("malloc_consolidate", ("malloc_consolidate",), Role.CONSOLIDATE, Tier.SLOW,
                     (Argument(RDI, Meaning.ARENA),)),
        FunctionSpec("systrim", ("systrim",), Role.TRIM, Tier.SLOW, (Argument(RDI, Meaning.SIZE),),
                     note="main arena gives memory back with brk"),
        FunctionSpec("new_heap", ("new_heap",), Role.GROW, Tier.SLOW,
                     (Argument(RDI, Meaning.SIZE), Argument(RSI, Meaning.SIZE)),
                     note="a non-main arena maps a new 64 MiB heap"),
        FunctionSpec("__lll_lock_wait_private", ("__lll_lock_wait_private",), Role.LOCK_WAIT, Tier.SLOW,
                     (Argument(RDI, Meaning.FUTEX),), exported=True,
                     note="blocking on a glibc-internal lock; an arena lock when rdi is an arena"),
        # Full tier: every call, aggregated in the kernel.
        FunctionSpec("malloc", ("__libc_malloc", "malloc"), Role.API_ALLOC, Tier.FULL,
                     (Argument(RDI, Meaning.SIZE),), returns=Meaning.POINTER, exported=True, stack=False),
        FunctionSpec("free", ("__libc_free", "free"), Role.API_FREE, Tier.FULL,
                     (Argument(RDI, Meaning.POINTER),), exported=True, stack=False),
        FunctionSpec("calloc", ("__libc_calloc", "calloc"), Role.API_ALLOC, Tier.FULL,
                     (Argument(RDI, Meaning.COUNT), Argument(RSI, Meaning.SIZE)), returns=Meaning.POINTER,
                     exported=True, stack=False),
        FunctionSpec("realloc", ("__libc_realloc", "realloc"), Role.API_ALLOC, Tier.FULL,
                     (Argument(RDI, Meaning.POINTER), Argument(RSI, Meaning.SIZE)), returns=Meaning.POINTER,
                     exported=True, stack=False),
        FunctionSpec("_int_malloc", ("_int_malloc",), Role.ALLOC_INTERNAL, Tier.FULL,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.SIZE)), returns=Meaning.POINTER,
                     stack=False),
        FunctionSpec("_int_free", ("_int_free",), Role.FREE_INTERNAL, Tier.FULL,
                     (Argument(RDI, Meaning.ARENA), Argument(RSI, Meaning.POINTER)), stack=False),
    ),
    notes=(
        "The arena mutex is the first member of struct malloc_state: a lock word equal to &main_arena, "
        "or equal to the address 0x30 into a 64 MiB-aligned heap whose heap_info.ar_ptr points back at it, "
        "is an arena lock. Other addresses (stdio, list_lock, free_list_lock) are not counted as arena waits.",
    ),
)
