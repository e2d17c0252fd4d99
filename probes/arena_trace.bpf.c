/* arena-trace BPF program (bcc). The tracer fills in the @NAME@ placeholders: the event structs generated
 * from probes/event_layout.py, the target's tgid and lock-classification constants, and one small
 * entry/return handler pair per resolved probe (see tracer/bpf_program.py).
 *
 * Per thread, a shadow call stack of traced calls gives each completed call its parent chain
 * (malloc -> _int_malloc -> sysmalloc -> brk), inclusive and self time. Slow-path calls are streamed one
 * record each (they are rare); full-tier calls are aggregated in the kernel into log2 histograms.
 * At the entry of slow-path functions a user-stack snapshot is copied page by page (a single large
 * bpf_probe_read_user fails as a whole at the top of the main thread's stack) for DWARF unwinding in
 * user space. Records are submitted without wakeups; the consumer polls, because a wakeup per record
 * costs several microseconds on these VMs.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>


#define MAX_DEPTH 8
#define DEPTH_MASK (MAX_DEPTH - 1)
#define HISTOGRAM_BUCKETS @HISTOGRAM_BUCKETS@
#define STACK_PAGES @STACK_PAGES@ /* full pages after the first partial one */
#define PAGE 4096
#define SNAPSHOT_BYTES ((STACK_PAGES + 1) * PAGE) /* at most */
#define TARGET_TGID @TARGET_TGID@
#define HEAP_ALIGNMENT @HEAP_ALIGNMENT@ /* glibc non-main heaps are aligned to HEAP_MAX_SIZE */

#define FLAG_ARENA_LOCK @FLAG_ARENA_LOCK@
#define FLAG_MAIN_ARENA @FLAG_MAIN_ARENA@
#define FLAG_PATH_TRUNCATED @FLAG_PATH_TRUNCATED@
#define FLAG_HAS_STACK @FLAG_HAS_STACK@
#define FLAG_UNMATCHED @FLAG_UNMATCHED@
#define FLAG_STACK_SKIPPED @FLAG_STACK_SKIPPED@

/* stream modes */
#define STREAM_NEVER 0 /* aggregate in the kernel */
#define STREAM_ALWAYS 1
#define STREAM_NESTED 2 /* stream only inside a traced allocator call (a syscall made by sysmalloc) */
#define STREAM_BATCHED 3 /* every call, EVENT_BATCH events per ring-buffer record (--full-events) */
/* what a frame does at return */
#define EMIT_AGGREGATE 0
#define EMIT_STREAM 1
#define EVENT_BATCH @EVENT_BATCH@
#define BATCH_MAX_AGE_NS 200000000ULL /* a partly filled batch goes out with the next event after this */
/* Stack snapshots are rate-limited per function and CPU (a token bucket): a consolidation storm calls
   malloc_consolidate ~200k times a second, and unwinding every one would swamp the consumer. Every call
   is still counted and timed; only its stack is skipped (EVENT_FLAG_STACK_SKIPPED). */
#define STACKS_PER_SECOND @STACKS_PER_SECOND@
#define STACK_BURST @STACK_BURST@
#define STACK_COST_NS (1000000000ULL / STACKS_PER_SECOND)
#define MAX_FUNCTIONS 256

/* classify modes */
#define CLASSIFY_NONE 0
#define CLASSIFY_GLIBC_LOCK 1 /* argument0 is a lock word: arena lock if main_arena or a heap's arena */
#define CLASSIFY_ALWAYS_ARENA 2 /* argument0 is an arena whose lock is contended (native_alloc) */

/* counters */
#define COUNTER_EVENTS_LOST 0
#define COUNTER_STACKS_LOST 1
#define COUNTER_DEPTH_OVERFLOW 2
#define COUNTER_STATE_FULL 3
#define COUNTER_UNMATCHED 4
#define COUNTER_STACKS_PARTIAL 5
#define COUNTER_STACKS_SKIPPED 6
#define COUNTER_BATCH_BUSY 7
#define COUNTERS 8

@EVENT_STRUCT@

@STACK_STRUCT@

struct frame {
    u64 start;
    u64 child_ns;
    u64 call_id;
    u64 argument0;
    u64 argument1;
    u64 return_slot;    /* sp at entry: where the return address lives */
    u64 return_address; /* read before a uretprobe replaces it with its trampoline */
    u16 function;
    u8 flags;
    u8 stream;
};

struct event_batch {
    u32 count;
    u32 busy; /* set while a program appends: a preempted writer must not be interleaved with */
    u64 first_ns;
    struct call_event events[EVENT_BATCH];
};

struct stack_budget {
    u64 last_ns;
    u64 credit_ns;
};

struct thread_state {
    u32 depth; /* may exceed MAX_DEPTH: deeper calls are counted but not recorded */
    u32 unused;
    struct frame frames[MAX_DEPTH];
};

struct aggregate_key {
    u64 path;
    u16 function;
    u8 flags;
    u8 pad[5];
};

struct aggregate_value {
    u64 calls;
    u64 total_ns;
    u64 self_ns;
    u64 max_ns;
    u64 histogram[HISTOGRAM_BUCKETS];
};

#define HEADER_SIZE sizeof(struct stack_snapshot)
struct snapshot_buffer {
    u8 bytes[HEADER_SIZE + SNAPSHOT_BYTES + PAGE]; /* one page of slack for the variable start */
};

/* settings[0]: runtime address of glibc's main_arena, 0 until libc is mapped (set from user space, so a
   command started by `arena-trace run` can be traced before its libraries are loaded) */
BPF_ARRAY(settings, u64, 4);
BPF_HASH(threads, u32, struct thread_state, 32768);
BPF_PERCPU_ARRAY(empty_state, struct thread_state, 1);
BPF_PERCPU_ARRAY(snapshot_scratch, struct snapshot_buffer, 1);
BPF_PERCPU_ARRAY(snapshot_header, struct stack_snapshot, 1);
BPF_PERCPU_ARRAY(call_counter, u64, 1);
BPF_PERCPU_ARRAY(counters, u64, COUNTERS);
BPF_PERCPU_HASH(aggregates, struct aggregate_key, struct aggregate_value, 8192);
BPF_RINGBUF_OUTPUT(call_events, @EVENT_RING_PAGES@);
BPF_RINGBUF_OUTPUT(stack_snapshots, @STACK_RING_PAGES@);
/* Per-CPU batch being filled; user space reads the partial ones from this map after detaching. */
BPF_PERCPU_ARRAY(pending_batch, struct event_batch, 1);
BPF_PERCPU_ARRAY(stack_budgets, struct stack_budget, MAX_FUNCTIONS);
BPF_RINGBUF_OUTPUT(event_batches, @BATCH_RING_PAGES@);

static __always_inline void count(int index) {
    u64 *value = counters.lookup(&index);
    if (value)
        *value += 1;
}

static __always_inline u32 log2_bucket(u64 value) {
    u32 bucket = 0;
#pragma unroll
    for (int shift = 32; shift > 0; shift >>= 1) {
        if (value >= ((u64)1 << shift)) {
            value >>= shift;
            bucket += shift;
        }
    }
    return bucket < HISTOGRAM_BUCKETS ? bucket : HISTOGRAM_BUCKETS - 1;
}

static __always_inline u8 classify_lock(u64 address, int mode) {
    if (mode == CLASSIFY_ALWAYS_ARENA)
        return FLAG_ARENA_LOCK;
    if (mode != CLASSIFY_GLIBC_LOCK || address == 0)
        return 0;
    int main_arena_index = 0;
    u64 *main_arena = settings.lookup(&main_arena_index);
    if (main_arena && *main_arena && address == *main_arena)
        return FLAG_ARENA_LOCK | FLAG_MAIN_ARENA;
    /* A non-main arena lives in the first heap of its 64 MiB-aligned heap, whose heap_info starts
       with ar_ptr: the lock word (offset 0 of malloc_state) is an arena iff the heap points back at it. */
    u64 heap = address & ~((u64)HEAP_ALIGNMENT - 1);
    if (heap == address)
        return 0;
    u64 arena = 0;
    if (bpf_probe_read_user(&arena, sizeof(arena), (void *)heap) == 0 && arena == address)
        return FLAG_ARENA_LOCK;
    return 0;
}

static __always_inline struct thread_state *thread_state(u32 tid) {
    struct thread_state *state = threads.lookup(&tid);
    if (state)
        return state;
    int zero = 0;
    struct thread_state *empty = empty_state.lookup(&zero);
    if (!empty)
        return 0;
    if (threads.update(&tid, empty) != 0) {
        count(COUNTER_STATE_FULL);
        return 0;
    }
    return threads.lookup(&tid);
}

static __always_inline int stack_allowed(u16 function, u64 now) {
    u32 index = function;
    struct stack_budget *budget = stack_budgets.lookup(&index);
    if (!budget)
        return 0;
    u64 credit = budget->credit_ns + (budget->last_ns ? now - budget->last_ns : STACK_BURST * STACK_COST_NS);
    if (credit > STACK_BURST * STACK_COST_NS)
        credit = STACK_BURST * STACK_COST_NS;
    budget->last_ns = now;
    if (credit < STACK_COST_NS) {
        budget->credit_ns = credit;
        return 0;
    }
    budget->credit_ns = credit - STACK_COST_NS;
    return 1;
}

static __always_inline u64 next_call_id(void) {
    int zero = 0;
    u64 *counter = call_counter.lookup(&zero);
    if (!counter)
        return 0;
    *counter += 1;
    /* unique across CPUs without atomics; never 0 */
    return (*counter << 8) | (bpf_get_smp_processor_id() & 0xff);
}

static __always_inline void snapshot_stack(struct pt_regs *ctx, struct thread_state *state, u32 depth,
                                           u64 call_id, u32 tid) {
    int zero = 0;
    struct snapshot_buffer *buffer = snapshot_scratch.lookup(&zero);
    struct stack_snapshot *header = snapshot_header.lookup(&zero);
    if (!buffer || !header)
        return;
    u64 sp = ctx->sp;
    header->call_id = call_id;
    header->tid = tid;
    header->rip = ctx->ip;
    header->rsp = sp;
    header->rbp = ctx->bp;
    header->rbx = ctx->bx;
    header->r12 = ctx->r12;
    header->r13 = ctx->r13;
    header->r14 = ctx->r14;
    header->r15 = ctx->r15;
#pragma unroll
    for (int level = 0; level < MAX_DEPTH; level++) {
        if (level < depth) {
            header->shadow_slot[level] = state->frames[level].return_slot;
            header->shadow_return[level] = state->frames[level].return_address;
        } else {
            header->shadow_slot[level] = 0;
            header->shadow_return[level] = 0;
        }
    }
    /* The record starts at `skip` so that every whole stack page lands at a constant buffer offset,
       which keeps the verifier's bounds simple; only the first (partial) page has a variable size. */
    u32 skip = sp & (PAGE - 1);
    u32 first = PAGE - skip;
    u8 *record = buffer->bytes + skip;
    u32 length = 0;
    if (bpf_probe_read_user(record + HEADER_SIZE, first, (void *)sp) == 0) {
        length = first;
#pragma unroll
        for (int page = 0; page < STACK_PAGES; page++) {
            if (bpf_probe_read_user(buffer->bytes + HEADER_SIZE + PAGE + page * PAGE, PAGE,
                                    (void *)(sp + first + page * PAGE)) != 0) {
                count(COUNTER_STACKS_PARTIAL);
                break;
            }
            length += PAGE;
        }
    }
    header->length = length;
    bpf_probe_read_kernel(record, HEADER_SIZE, header);
    u64 size = HEADER_SIZE + length;
    if (size > HEADER_SIZE + SNAPSHOT_BYTES)
        size = HEADER_SIZE + SNAPSHOT_BYTES;
    if (stack_snapshots.ringbuf_output(record, size, BPF_RB_NO_WAKEUP) != 0)
        count(COUNTER_STACKS_LOST);
}

/* A glibc probe knows its own ELF address, so the IP it fires at gives libc's load bias and thus the
   runtime main_arena, even for a command started by `arena-trace run` before libc was mapped. */
static __always_inline void learn_main_arena(struct pt_regs *ctx, u64 probe_address, u64 main_arena_address) {
    int index = 0;
    u64 *main_arena = settings.lookup(&index);
    if (main_arena && *main_arena == 0)
        *main_arena = ctx->ip - probe_address + main_arena_address;
}

/* What one probe passes to on_entry. (It stays inlined into each handler: bcc 0.26 compiles every function
   into its own section and does not link BPF-to-BPF calls, so shared subprograms would not load.) */
struct entry_request {
    u64 argument0;
    u64 argument1;
    u64 probe_address;
    u64 main_arena_address;
    u16 function;
    u8 classify;
    u8 stream;
    u8 want_stack;
    u8 record_return;
};

static __always_inline int on_entry(struct pt_regs *ctx, struct entry_request *request) {
    u16 function = request->function;
    u64 argument0 = request->argument0;
    u64 argument1 = request->argument1;
    int classify = request->classify;
    int stream = request->stream;
    int want_stack = request->want_stack;
    int record_return = request->record_return;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((pid_tgid >> 32) != TARGET_TGID)
        return 0;
    if (request->main_arena_address)
        learn_main_arena(ctx, request->probe_address, request->main_arena_address);
    u32 tid = (u32)pid_tgid;
    struct thread_state *state = thread_state(tid);
    if (!state)
        return 0;
    u32 depth = state->depth;
    if (depth >= MAX_DEPTH) {
        state->depth = depth + 1;
        count(COUNTER_DEPTH_OVERFLOW);
        return 0;
    }
    struct frame *frame = &state->frames[depth & DEPTH_MASK];
    frame->function = function;
    frame->argument0 = argument0;
    frame->argument1 = argument1;
    frame->flags = classify_lock(argument0, classify);
    if (stream == STREAM_ALWAYS || stream == STREAM_BATCHED || (stream == STREAM_NESTED && depth > 0) ||
        (frame->flags & FLAG_ARENA_LOCK))
        frame->stream = EMIT_STREAM;
    else
        frame->stream = EMIT_AGGREGATE;
    frame->child_ns = 0;
    frame->call_id = next_call_id();
    frame->return_slot = 0;
    frame->return_address = 0;
    if (record_return) {
        u64 slot = ctx->sp;
        u64 return_address = 0;
        bpf_probe_read_user(&return_address, sizeof(return_address), (void *)slot);
        frame->return_slot = slot;
        frame->return_address = return_address;
    }
    state->depth = depth + 1;
    if (want_stack > 0) {
        if (stack_allowed(function, bpf_ktime_get_ns())) {
            frame->flags |= FLAG_HAS_STACK;
            snapshot_stack(ctx, state, depth, frame->call_id, tid);
        } else {
            frame->flags |= FLAG_STACK_SKIPPED;
            count(COUNTER_STACKS_SKIPPED);
        }
    }
    frame->start = bpf_ktime_get_ns();
    return 0;
}

static __always_inline int on_return(u32 function, u64 return_value) {
    u64 now = bpf_ktime_get_ns();
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((pid_tgid >> 32) != TARGET_TGID)
        return 0;
    u32 tid = (u32)pid_tgid;
    struct thread_state *state = threads.lookup(&tid);
    if (!state)
        return 0;
    u32 depth = state->depth;
    if (depth == 0)
        return 0; /* entry happened before we attached */
    if (depth > MAX_DEPTH) {
        state->depth = depth - 1;
        return 0;
    }
    u32 index = (depth - 1) & DEPTH_MASK;
    u8 unmatched = 0;
    if (state->frames[index].function != function) {
        /* a call we saw enter never returned through its probe (longjmp, or a tail call): drop it */
        u32 found = MAX_DEPTH;
#pragma unroll
        for (int level = MAX_DEPTH - 1; level >= 0; level--) {
            if (found == MAX_DEPTH && level < depth && state->frames[level].function == function)
                found = level;
        }
        if (found == MAX_DEPTH) {
            count(COUNTER_UNMATCHED);
            return 0;
        }
        index = found & DEPTH_MASK;
        unmatched = FLAG_UNMATCHED;
    }
    struct frame *frame = &state->frames[index];
    u64 duration = now - frame->start;
    u64 self = duration > frame->child_ns ? duration - frame->child_ns : 0;
    u64 path = 0;
    u64 parent_call_id = 0;
#pragma unroll
    for (int level = 0; level < MAX_DEPTH; level++) {
        if (level < index)
            path |= ((u64)(state->frames[level].function & 0xff)) << (8 * level);
    }
    if (index > 0) {
        struct frame *parent = &state->frames[(index - 1) & DEPTH_MASK];
        parent->child_ns += duration;
        parent_call_id = parent->call_id;
    }
    state->depth = index;
    u8 flags = frame->flags | unmatched;
    if (frame->stream == EMIT_STREAM) {
        int zero = 0;
        struct event_batch *batch = pending_batch.lookup(&zero);
        if (!batch)
            return 0;
        struct call_event single = {};
        struct call_event *event = &single;
        u32 slot = 0;
        int batched = !batch->busy && batch->count < EVENT_BATCH;
        if (batched) {
            batch->busy = 1;
            slot = batch->count;
            if (slot == 0)
                batch->first_ns = now;
            event = &batch->events[slot & (EVENT_BATCH - 1)];
        }
        event->timestamp_ns = frame->start;
        event->duration_ns = duration;
        event->self_ns = self;
        event->call_id = frame->call_id;
        event->parent_call_id = parent_call_id;
        event->path = path;
        event->argument0 = frame->argument0;
        event->argument1 = frame->argument1;
        event->return_value = return_value;
        event->tid = tid;
        event->function = function;
        event->depth = index;
        event->flags = flags;
        if (!batched) {
            /* another program on this CPU was preempted mid-append: send this one on its own */
            count(COUNTER_BATCH_BUSY);
            if (call_events.ringbuf_output(&single, sizeof(single), BPF_RB_NO_WAKEUP) != 0)
                count(COUNTER_EVENTS_LOST);
            return 0;
        }
        batch->count = slot + 1;
        if (slot + 1 >= EVENT_BATCH || now - batch->first_ns > BATCH_MAX_AGE_NS) {
            if (event_batches.ringbuf_output(batch, sizeof(*batch), BPF_RB_NO_WAKEUP) != 0) {
                int lost = COUNTER_EVENTS_LOST;
                u64 *value = counters.lookup(&lost);
                if (value)
                    *value += slot + 1;
            }
            batch->count = 0;
        }
        batch->busy = 0;
        return 0;
    }
    struct aggregate_key key = {};
    key.path = path;
    key.function = function;
    key.flags = flags & ~FLAG_HAS_STACK;
    struct aggregate_value *value = aggregates.lookup(&key);
    if (!value) {
        struct aggregate_value empty = {};
        aggregates.update(&key, &empty);
        value = aggregates.lookup(&key);
        if (!value)
            return 0;
    }
    value->calls += 1;
    value->total_ns += duration;
    value->self_ns += self;
    if (duration > value->max_ns)
        value->max_ns = duration;
    u32 bucket = log2_bucket(duration);
    if (bucket < HISTOGRAM_BUCKETS)
        value->histogram[bucket] += 1;
    return 0;
}

struct thread_name {
    char comm[TASK_COMM_LEN];
};
/* names of the target's threads as they exit: short-lived workers are gone before /proc can be read */
BPF_HASH(exited_thread_names, u32, struct thread_name, 65536);

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((pid_tgid >> 32) != TARGET_TGID)
        return 0;
    u32 tid = (u32)pid_tgid;
    threads.delete(&tid);
    struct thread_name name = {};
    bpf_get_current_comm(&name.comm, sizeof(name.comm));
    exited_thread_names.update(&tid, &name);
    return 0;
}

@HANDLERS@
