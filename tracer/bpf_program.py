"""Specialises probes/arena_trace.bpf.c for one target: constants, record structs and one handler pair per probe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from importlib import resources

from arena_trace.probes import event_layout
from arena_trace.probes.catalog import SYSCALLS

# glibc on 64-bit: HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 2 * 4 * 1024 * 1024 * sizeof(long)
# (malloc/arena.c); non-main heaps are aligned to it. Only the hugetlb tunable changes it.
GLIBC_HEAP_ALIGNMENT = 64 * 1024 * 1024
STACK_PAGES = 3  # after the partial first page: 12-16 KiB of stack, enough for 100 % of stacks measured here
EVENT_RING_PAGES = 1024  # 4 MiB: lost nothing at 1 M events/s in the research runs
STACK_RING_PAGES = 8192  # 32 MiB: about 2,000 snapshots between two polls
# Per function and CPU: enough for every stack of a normal slow path, bounded for storms (each stack costs
# ~1.3 µs in BPF and ~10 µs to unwind in Python).
STACKS_PER_SECOND = 2000
STACK_BURST = 200
BATCH_RING_PAGES = 8192  # 32 MiB: 0.4 s of events at 1 M events/s, against a 50 ms poll

REGISTER_EXPRESSIONS = {"rdi": "ctx->di", "rsi": "ctx->si", "rdx": "ctx->dx", "rcx": "ctx->cx",
                        "r8": "ctx->r8", "r9": "ctx->r9"}


class Stream(IntEnum):
    NEVER = 0
    ALWAYS = 1
    NESTED = 2
    BATCHED = 3


class Classify(IntEnum):
    NONE = 0
    GLIBC_LOCK = 1
    ALWAYS_ARENA = 2


# Syscall tracepoint fields: (argument0, argument1, classify expression). Only FUTEX_WAIT and
# FUTEX_WAIT_BITSET sleep on the lock word; wakes on an arena address are not waits.
SYSCALL_ARGUMENTS = {
    "brk": ("args->brk", "0", "0"),
    "mmap": ("args->len", "args->flags", "0"),
    "munmap": ("args->len", "args->addr", "0"),
    "mprotect": ("args->len", "args->prot", "0"),
    "madvise": ("args->len_in", "args->behavior", "0"),
    "futex": ("(u64)args->uaddr", "args->op",
              "(((args->op & 0x7f) == 0 || (args->op & 0x7f) == 9) ? CLASSIFY_GLIBC_LOCK : CLASSIFY_NONE)"),
}
assert set(SYSCALL_ARGUMENTS) == {syscall.name for syscall in SYSCALLS}


@dataclass(frozen=True)
class UprobeHandler:
    function_id: int
    argument_registers: tuple[str, ...]
    classify: Classify
    stream: Stream
    want_stack: bool
    probe_address: int = 0  # ELF virtual address of the probe, with ...
    main_arena_address: int = 0  # ... glibc's main_arena ELF address: lets BPF learn the runtime main_arena

    @property
    def entry_name(self) -> str:
        return f"entry_{self.function_id}"

    @property
    def return_name(self) -> str:
        return f"return_{self.function_id}"

    def source(self) -> str:
        arguments = [REGISTER_EXPRESSIONS[register] for register in self.argument_registers[:2]]
        arguments += ["0"] * (2 - len(arguments))
        return (
            f"int {self.entry_name}(struct pt_regs *ctx) {{\n"
            f"    struct entry_request request = {{.function = {self.function_id}, .argument0 = {arguments[0]}, "
            f".argument1 = {arguments[1]}, .classify = {int(self.classify)}, .stream = {int(self.stream)}, "
            f".want_stack = {int(self.want_stack)}, .record_return = 1, .probe_address = {self.probe_address:#x}ULL, "
            f".main_arena_address = {self.main_arena_address:#x}ULL}};\n"
            f"    return on_entry(ctx, &request);\n}}\n"
            f"int {self.return_name}(struct pt_regs *ctx) {{\n"
            f"    return on_return({self.function_id}, PT_REGS_RC(ctx));\n}}\n"
        )


@dataclass(frozen=True)
class SyscallHandler:
    function_id: int
    syscall: str
    stream: Stream

    def source(self) -> str:
        argument0, argument1, classify = SYSCALL_ARGUMENTS[self.syscall]
        return (
            f"TRACEPOINT_PROBE(syscalls, sys_enter_{self.syscall}) {{\n"
            f"    struct entry_request request = {{.function = {self.function_id}, .argument0 = {argument0}, "
            f".argument1 = {argument1}, .classify = {classify}, .stream = {int(self.stream)}}};\n"
            f"    return on_entry((struct pt_regs *)0, &request);\n}}\n"
            f"TRACEPOINT_PROBE(syscalls, sys_exit_{self.syscall}) {{\n"
            f"    return on_return({self.function_id}, (u64)args->ret);\n}}\n"
        )


def program_source(target_tgid: int, handlers: list[UprobeHandler | SyscallHandler],
                   heap_alignment: int = GLIBC_HEAP_ALIGNMENT) -> str:
    template = resources.files("arena_trace.probes").joinpath("arena_trace.bpf.c").read_text()
    values = {
        "HISTOGRAM_BUCKETS": str(event_layout.HISTOGRAM_BUCKETS),
        "STACK_PAGES": str(STACK_PAGES),
        "TARGET_TGID": str(int(target_tgid)),
        "HEAP_ALIGNMENT": f"{int(heap_alignment):#x}ULL",
        "FLAG_ARENA_LOCK": str(event_layout.EVENT_FLAG_ARENA_LOCK),
        "FLAG_MAIN_ARENA": str(event_layout.EVENT_FLAG_MAIN_ARENA),
        "FLAG_PATH_TRUNCATED": str(event_layout.EVENT_FLAG_PATH_TRUNCATED),
        "FLAG_HAS_STACK": str(event_layout.EVENT_FLAG_HAS_STACK),
        "FLAG_UNMATCHED": str(event_layout.EVENT_FLAG_UNMATCHED),
        "FLAG_STACK_SKIPPED": str(event_layout.EVENT_FLAG_STACK_SKIPPED),
        "STACKS_PER_SECOND": str(STACKS_PER_SECOND),
        "STACK_BURST": str(STACK_BURST),
        "EVENT_STRUCT": event_layout.c_struct("call_event", event_layout.EVENT_FIELDS),
        "STACK_STRUCT": event_layout.c_struct("stack_snapshot", event_layout.STACK_FIELDS),
        "EVENT_RING_PAGES": str(EVENT_RING_PAGES),
        "STACK_RING_PAGES": str(STACK_RING_PAGES),
        "BATCH_RING_PAGES": str(BATCH_RING_PAGES),
        "EVENT_BATCH": str(event_layout.EVENT_BATCH),
        "HANDLERS": "\n".join(handler.source() for handler in handlers),
    }
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


SETTING_MAIN_ARENA = 0

COUNTER_NAMES = ("events_lost", "stacks_lost", "depth_overflow", "thread_table_full", "unmatched_returns",
                 "stacks_partial", "stacks_skipped", "batch_busy")
