/* Multithreaded stress test for native_alloc, meant to run under ASan/UBSan and TSan.
 * Threads share one arena (plus one private arena each), allocate mixed sizes, batch-allocate, hand
 * blocks to other threads to free (so blocks land in foreign thread caches), and call na_consolidate.
 * Every block carries a pattern derived from its address and size, checked before it is freed:
 * overlapping blocks or a corrupted free list show up as a mismatch.  Exit status 0 means clean.
 * usage: na-stress [threads] [ops per thread] [seed] */
#define _GNU_SOURCE
#include "native_alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 256
#define HANDOFF 64

typedef struct {
    void *p;
    size_t n;
    na_arena_t *a;
} blk;

static na_arena_t *shared;
static long ops_per_thread;
static int failures;
static pthread_mutex_t handoff_lock = PTHREAD_MUTEX_INITIALIZER;
static blk handoff[HANDOFF];

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint8_t pat(const void *p, size_t n, size_t i) { return (uint8_t)(((uintptr_t)p >> 4) ^ n ^ (i * 131)); }

static void fill(void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = pat(p, n, i);
}

static int check(const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(p, n, i)) return 0;
    return 1;
}

static void release(na_arena_t *a, blk *b) {
    if (!b->p) return;
    if (!check(b->p, b->n)) {
        fprintf(stderr, "na-stress: pattern mismatch at %p (%zu bytes)\n", b->p, b->n);
        __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
    }
    na_free(a, b->p);
    b->p = NULL;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = rng_next(s) % 1000;
    if (r < 700) return 1 + rng_next(s) % 128;
    if (r < 950) return 129 + rng_next(s) % 896;
    if (r < 998) return 1025 + rng_next(s) % 16000;
    return NA_LARGE_THRESHOLD + 1 + rng_next(s) % 100000;
}

static void *worker(void *arg) {
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    na_arena_t *mine = na_arena_create(((uintptr_t)arg & 1) ? NA_ARENA_NO_TCACHE : 0);
    blk slots[SLOTS];
    memset(slots, 0, sizeof(slots));
    for (long op = 0; op < ops_per_thread; op++) {
        uint64_t r = rng_next(&seed) % 1000;
        blk *b = &slots[rng_next(&seed) % SLOTS];
        na_arena_t *a = (r & 1) ? shared : mine;
        if (r < 850) {
            release(NULL, b);
            b->n = pick_size(&seed);
            b->p = na_alloc(a, b->n);
            b->a = a;
            if (!b->p) {
                fprintf(stderr, "na-stress: na_alloc(%zu) failed\n", b->n);
                __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
                continue;
            }
            if ((uintptr_t)b->p % NA_ALIGNMENT) __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
            fill(b->p, b->n);
        } else if (r < 950) {
            /* swap with the handoff table so another thread frees this block; only shared-arena blocks
             * travel, because private arenas are destroyed while other threads still run */
            if (b->p && b->a != shared) continue;
            blk tmp = *b;
            pthread_mutex_lock(&handoff_lock);
            blk *h = &handoff[rng_next(&seed) % HANDOFF];
            *b = *h;
            *h = tmp;
            pthread_mutex_unlock(&handoff_lock);
        } else if (r < 995) {
            void *out[24];
            size_t n = 1 + rng_next(&seed) % 600;
            size_t got = na_alloc_batch(a, n, 24, out);
            if (got != 24) __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
            for (size_t i = 0; i < got; i++) fill(out[i], n);
            for (size_t i = 0; i < got; i++) {
                blk t = {out[i], n, a};
                release(a, &t);
            }
        } else {
            na_consolidate(a);
        }
    }
    for (int i = 0; i < SLOTS; i++) release(NULL, &slots[i]);
    na_consolidate(mine);
    struct na_stats st;
    na_stats(mine, &st);
    na_arena_destroy(mine);
    return NULL;
}

static void *drain_handoff(void *arg) {
    for (int i = 0; i < HANDOFF; i++) release(NULL, &handoff[i]);
    return arg;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    ops_per_thread = argc > 2 ? atol(argv[2]) : 200000;
    shared = na_arena_create(0);
    pthread_t tid[64];
    if (threads < 1 || threads > 64) return 2;
    for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
    /* drained by a thread so its cache is flushed at exit and the leak check below is exact */
    pthread_create(&tid[0], NULL, drain_handoff, NULL);
    pthread_join(tid[0], NULL);

    struct na_stats st;
    na_stats(shared, &st);
    if (st.allocs + st.batch_objects < st.frees) failures++;
    na_consolidate(shared);
    na_stats(shared, &st);
    /* every thread flushed its cache at exit and everything was freed, so nothing is in use */
    if (st.bytes_in_use != 0 || st.chunks != 0 || st.large_blocks != 0) {
        fprintf(stderr, "na-stress: leak: in_use=%llu chunks=%llu large=%llu\n", (unsigned long long)st.bytes_in_use,
                (unsigned long long)st.chunks, (unsigned long long)st.large_blocks);
        failures++;
    }
    printf("na-stress: threads=%d ops=%ld allocs=%llu frees=%llu batches=%llu lock_waits=%llu failures=%d\n", threads,
           ops_per_thread, (unsigned long long)st.allocs, (unsigned long long)st.frees, (unsigned long long)st.batches,
           (unsigned long long)st.lock_waits, failures);
    na_arena_destroy(shared);
    return failures ? 1 : 0;
}
