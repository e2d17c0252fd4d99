/* native_alloc: a small thread-safe arena allocator that arena-trace uses as a traceable target.
 *
 * Every function marked "traced" below is an exported symbol whose first instruction is the 5-byte nop
 * 0f 1f 44 00 00, followed by a jmp to the implementation.  A uprobe on a nop5 takes the kernel's
 * optimized path (no trap), and since the nop does not touch the stack, a uretprobe on the same address
 * still finds the return address at (%rsp).  The arena pointer is always the first argument (rdi).
 *
 * Memory layout (see README.md for the long version):
 *   chunk  : 1 MiB region obtained by one mmap (na_grow), split into spans by a boundary-tag heap.
 *   span   : variable-size block, 16-byte header; free spans are coalesced with their neighbours.
 *   slab   : a 32 KiB span holding objects of one size class (requests <= NA_SMALL_MAX).
 *   medium : NA_SMALL_MAX < size <= NA_LARGE_THRESHOLD, served as its own span.
 *   large  : size > NA_LARGE_THRESHOLD, its own mmap.
 * Small requests also go through a per-thread cache (NA_TCACHE_* below) refilled by na_alloc_batch.
 */
#ifndef NATIVE_ALLOC_H
#define NATIVE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NA_API __attribute__((visibility("default")))

#define NA_ALIGNMENT 16u
#define NA_CHUNK_SIZE (1u << 20)        /* bytes per na_grow mapping */
#define NA_CHUNK_HEADER 64u             /* chunk bookkeeping at the start of every chunk */
#define NA_CHUNK_TRAILER 16u            /* in-use sentinel span that stops coalescing at the chunk end */
#define NA_CHUNK_USABLE (NA_CHUNK_SIZE - NA_CHUNK_HEADER - NA_CHUNK_TRAILER)
#define NA_SPAN_HEADER 16u              /* header in front of every span and every object */
#define NA_SMALL_MAX 1024u              /* largest request served from size-classed slabs */
#define NA_LARGE_THRESHOLD (128u * 1024u) /* requests above this get their own mmap */
#define NA_SLAB_SPAN (32u * 1024u)      /* span bytes per slab */
#define NA_MIN_FREE_SPAN 48u            /* split remainders smaller than this stay with the allocation */
/* The smallest span the heap ever hands out: a medium request of NA_SMALL_MAX+1 bytes rounded to 16
 * plus its header.  A free span smaller than this can never satisfy a request until it coalesces,
 * which is what the fragmentation ratio measures. */
#define NA_MIN_SPAN_REQUEST (NA_SMALL_MAX + NA_ALIGNMENT + NA_SPAN_HEADER)
#define NA_NUM_CLASSES 20
#define NA_TCACHE_MAX 32                /* objects a thread caches per arena and size class */
#define NA_TCACHE_BATCH 16              /* objects per refill (one na_alloc_batch call) */
#define NA_TCACHE_ARENAS 4              /* arenas a thread can cache at once */

/* na_arena_create flags */
#define NA_ARENA_NO_TCACHE 1u           /* every na_alloc/na_free goes to the arena under its lock */

typedef struct na_arena na_arena_t;

struct na_stats {
    uint64_t bytes_in_use;      /* usable bytes handed out: held by callers or sitting in thread caches */
    uint64_t bytes_free;        /* free span bytes (headers included) + free slab slots (class size) */
    uint64_t bytes_mapped;      /* chunks + large mappings */
    uint64_t frag_bytes;        /* free span bytes in spans smaller than NA_MIN_SPAN_REQUEST */
    uint64_t largest_free;      /* largest single free block (span or slab slot) */
    double fragmentation;       /* frag_bytes / bytes_free, 0 when bytes_free == 0 */
    double largest_free_share;  /* largest_free / bytes_free, 0 when bytes_free == 0 */
    uint64_t allocs;            /* successful na_alloc calls */
    uint64_t frees;             /* na_free calls with a non-NULL pointer */
    uint64_t batches;           /* na_alloc_batch calls, including thread-cache refills */
    uint64_t batch_objects;     /* objects handed out by those calls */
    uint64_t consolidations;    /* na_consolidate calls */
    uint64_t resets;            /* na_reset calls */
    uint64_t grows;             /* na_grow calls that mapped a chunk */
    uint64_t large_maps;        /* large requests mapped */
    uint64_t large_unmaps;      /* large blocks unmapped by na_free */
    uint64_t lock_waits;        /* arena lock acquisitions whose trylock failed (na_lock_wait calls) */
    uint64_t lock_acquisitions; /* all arena lock acquisitions, including this na_stats call */
    uint64_t chunks;            /* chunks currently mapped */
    uint64_t slabs;             /* slabs currently carved */
    uint64_t large_blocks;      /* large mappings currently live */
    uint64_t slabs_released;    /* empty slabs returned to the span heap by na_consolidate */
    uint64_t chunks_released;   /* empty chunks unmapped by na_consolidate */
};

/* Create an arena (flags: NA_ARENA_*).  Returns NULL with errno set on failure. */
NA_API na_arena_t *na_arena_create(unsigned flags);
/* Unmap everything the arena owns.  No thread may use the arena concurrently or afterwards. */
NA_API void na_arena_destroy(na_arena_t *arena);

/* traced.  16-byte aligned block of at least size bytes (size 0 behaves as 1); NULL on failure. */
NA_API void *na_alloc(na_arena_t *arena, size_t size);
/* traced.  arena may be NULL (the owner is read from the block header); otherwise it must own ptr.
 * ptr may be NULL.  Aborts on a double free or a foreign pointer. */
NA_API void na_free(na_arena_t *arena, void *ptr);
/* traced.  Allocates up to n blocks of size bytes under a single lock acquisition, stores them in
 * out[0..ret) and returns how many it got (fewer than n only when memory ran out).  Bypasses the
 * calling thread's cache; the cache itself refills through this function. */
NA_API size_t na_alloc_batch(na_arena_t *arena, size_t size, size_t n, void **out);
/* traced.  Returns slabs with no live object to the span heap (coalescing them) and unmaps chunks
 * that became entirely free.  Returns the number of bytes unmapped. */
NA_API size_t na_consolidate(na_arena_t *arena);
/* traced.  Frees every block at once: chunks are re-initialised as one free span each, large
 * mappings are unmapped, every thread cache for this arena is invalidated.  Counters are kept.
 * No thread may use blocks of the arena across the call. */
NA_API void na_reset(na_arena_t *arena);
/* Snapshot of the arena's state and counters.  Returns 0, or -1 if an argument is NULL. */
NA_API int na_stats(na_arena_t *arena, struct na_stats *out);

/* traced, internal slow path (exported only as a probe point; never call it directly).  Called with
 * the arena lock held when no free span fits min_bytes; maps one new chunk and returns its base,
 * or NULL if mmap failed. */
NA_API void *na_grow(na_arena_t *arena, size_t min_bytes);
/* traced, internal slow path (exported only as a probe point; never call it directly).  Called
 * only after pthread_mutex_trylock on the arena lock failed; blocks in pthread_mutex_lock and returns
 * holding the lock, so entry-to-return time is the lock wait. */
NA_API void na_lock_wait(na_arena_t *arena);

/* Usable size of a block returned by na_alloc/na_alloc_batch. */
NA_API size_t na_usable_size(const void *ptr);

#ifdef __cplusplus
}
#endif

#endif
