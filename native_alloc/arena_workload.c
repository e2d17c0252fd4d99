/* arena-workload: drives glibc malloc or native_alloc through named scenarios, each of which provokes
 * one allocator pathology, and reports exactly how many allocator calls it made as one JSON document on
 * stdout.  Those counts are the ground truth for tracer tests, so:
 *   - the program's own bookkeeping uses mmap, never malloc;
 *   - output goes through write(2), not stdio (stdout's buffer would be malloc'ed);
 *   - every pointer passes through an asm escape so gcc cannot elide a malloc/free pair
 *     (and the file is built with -fno-builtin-malloc -fno-builtin-free).
 * libc itself may still call malloc/calloc/free internally (pthread_create allocates a DTV with calloc
 * for a new thread stack, an exiting thread frees its tcache); those calls are not in the counts.
 * See README.md for the call-count formula of each scenario. */
#define _GNU_SOURCE
#include "native_alloc.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { A_GLIBC, A_NATIVE };
enum { S_FASTPATH, S_CONTENTION, S_GROWTH, S_MMAP_THRASH, S_CONSOLIDATION, S_CHURN, S_BATCH_CONTENTION, S_COUNT };
static const char *scenario_names[S_COUNT] = {"fastpath", "contention", "growth", "mmap-thrash",
                                              "consolidation", "churn", "batch-contention"};
enum { Z_DEFAULT, Z_SMALL, Z_MEDIUM, Z_LARGE, Z_MIXED };
static const char *size_names[] = {"default", "small", "medium", "large", "mixed"};

/* counter slots; names depend on the allocator */
enum { C_ALLOC, C_FREE, C_CALLOC, C_REALLOC, C_BATCH, C_CONSOLIDATE, C_RESET, C_CREATE, C_DESTROY, NCOUNT };
static const char *glibc_names[] = {"malloc", "free", "calloc", "realloc"};
static const int glibc_ncount = 4;
static const char *native_names[] = {"na_alloc", "na_free", NULL, NULL, "na_alloc_batch",
                                     "na_consolidate", "na_reset", "na_arena_create", "na_arena_destroy"};

enum { ROLE_MAIN, ROLE_WORKER, ROLE_CHURN };
static const char *role_names[] = {"main", "worker", "churn"};

#define CONSOLIDATION_SMALL 64  /* small blocks freed before the large request */
#define CONSOLIDATION_SMALL_SIZE 32
#define CONSOLIDATION_LARGE_SIZE 2000
#define CHURN_PAIRS 4           /* malloc/free pairs per short-lived thread */
#define BATCH_N 16              /* objects per na_alloc_batch in batch-contention */
#define MMAP_THRASH_BASE (256 * 1024)
#define MAX_RECORDS (1u << 20)

typedef struct trec {
    long tid;
    int role;
    int index;
    uint64_t iterations;
    uint64_t c[NCOUNT];
    uint64_t verify_errors;
    uint64_t bytes_requested; /* sum of the size arguments of the counted calls */
} trec;

static struct {
    int allocator, scenario, sizes, threads, arena_per_thread, no_tcache, wait_signal, arena_max;
    long iterations; /* per worker; -1 in duration mode */
    double duration, delay;
    uint64_t seed;
    long live;
} opt = {.allocator = A_GLIBC, .scenario = S_FASTPATH, .threads = 1, .iterations = -1, .seed = 1, .live = -1};

static trec *records;
static uint32_t nrecords;
static na_arena_t *shared_arena;
static struct timespec deadline;
static pthread_barrier_t start_barrier;

/* ---------------------------------------------------------------- utilities */

static void die(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0) {
        ssize_t r = write(2, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
        (void)r;
    }
    exit(2);
}

static void *map_zeroed(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("arena-workload: mmap(%zu) failed\n", n);
    return p;
}

static trec *new_record(int role, int index) {
    uint32_t i = __atomic_fetch_add(&nrecords, 1, __ATOMIC_RELAXED);
    if (i >= MAX_RECORDS) die("arena-workload: too many threads\n");
    trec *t = &records[i];
    t->tid = syscall(SYS_gettid);
    t->role = role;
    t->index = index;
    return t;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t rng_seed(uint64_t seed, uint64_t stream) {
    uint64_t s = (seed + 1) * 0x9e3779b97f4a7c15ull ^ (stream + 1) * 0xbf58476d1ce4e5b9ull;
    return s ? s : 1;
}

static size_t pick_size(int sizes, uint64_t *s) {
    if (sizes == Z_MIXED) {
        uint64_t r = rng_next(s) % 10;
        sizes = r < 6 ? Z_SMALL : r < 9 ? Z_MEDIUM : Z_LARGE;
    }
    switch (sizes) {
    case Z_SMALL: return 1 + rng_next(s) % 128;
    case Z_MEDIUM: return 129 + rng_next(s) % (1024 - 128);
    default: return 1025 + rng_next(s) % (64 * 1024 - 1024);
    }
}

static int keep_going(uint64_t i) {
    if (opt.iterations >= 0) return i < (uint64_t)opt.iterations;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec < deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec < deadline.tv_nsec);
}

/* Keeps gcc from proving a block unused and deleting the allocation. */
static inline void escape(void *p) { __asm__ volatile("" : : "g"(p) : "memory"); }

/* Full pattern up to 4 KiB; beyond that the first and last 64 bytes plus 8 bytes per page, so
 * mmap-sized blocks stay cheap while every page is still touched and checked. */
static inline uint8_t pat(const void *p, size_t n, size_t i) { return (uint8_t)(((uintptr_t)p >> 4) ^ n ^ (i * 131)); }

/* `key` is the address the pattern was derived from: the block itself, or its old address after
 * realloc moved it. */
static void fill_as(void *dst, const void *key, size_t n) {
    uint8_t *b = dst;
    if (n <= 4096) {
        for (size_t i = 0; i < n; i++) b[i] = pat(key, n, i);
        return;
    }
    for (size_t i = 0; i < 64; i++) b[i] = pat(key, n, i);
    for (size_t i = n - 64; i < n; i++) b[i] = pat(key, n, i);
    for (size_t i = 4096; i + 8 <= n; i += 4096)
        for (size_t k = i; k < i + 8; k++) b[k] = pat(key, n, k);
}

static int check_as(const void *src, const void *key, size_t n) {
    const uint8_t *b = src;
    if (n <= 4096) {
        for (size_t i = 0; i < n; i++)
            if (b[i] != pat(key, n, i)) return 0;
        return 1;
    }
    for (size_t i = 0; i < 64; i++)
        if (b[i] != pat(key, n, i)) return 0;
    for (size_t i = n - 64; i < n; i++)
        if (b[i] != pat(key, n, i)) return 0;
    for (size_t i = 4096; i + 8 <= n; i += 4096)
        for (size_t k = i; k < i + 8; k++)
            if (b[k] != pat(key, n, k)) return 0;
    return 1;
}

static void fill(void *p, size_t n) { fill_as(p, p, n); }
static int check(const void *p, size_t n) { return check_as(p, p, n); }

/* ---------------------------------------------------------------- counted allocator calls */

typedef struct ctx {
    trec *t;
    na_arena_t *arena;
    uint64_t rng;
} ctx;

static void *x_alloc(ctx *c, size_t n) {
    void *p;
    if (opt.allocator == A_GLIBC)
        p = malloc(n);
    else
        p = na_alloc(c->arena, n);
    c->t->c[C_ALLOC]++;
    c->t->bytes_requested += n;
    escape(p);
    if (!p) die("arena-workload: allocation of %zu bytes failed\n", n);
    return p;
}

static void x_free(ctx *c, void *p) {
    escape(p);
    if (opt.allocator == A_GLIBC)
        free(p);
    else
        na_free(c->arena, p);
    c->t->c[C_FREE]++;
}

static void *x_calloc(ctx *c, size_t n) {
    void *p = calloc(1, n);
    c->t->c[C_CALLOC]++;
    c->t->bytes_requested += n;
    escape(p);
    if (!p) die("arena-workload: calloc(%zu) failed\n", n);
    return p;
}

static void *x_realloc(ctx *c, void *old, size_t n) {
    escape(old);
    void *p = realloc(old, n);
    c->t->c[C_REALLOC]++;
    c->t->bytes_requested += n;
    escape(p);
    if (!p) die("arena-workload: realloc(%zu) failed\n", n);
    return p;
}

static void put(ctx *c, void *p, size_t n) { fill(p, n); }

static void drop(ctx *c, void *p, size_t n) {
    if (!check(p, n)) c->t->verify_errors++;
    x_free(c, p);
}

/* ---------------------------------------------------------------- scenarios */

typedef struct blk {
    void *p;
    size_t n;
} blk;

static int default_sizes(void) {
    switch (opt.scenario) {
    case S_GROWTH: return Z_MEDIUM;
    default: return Z_SMALL;
    }
}

static void run_fastpath(ctx *c, int sizes) {
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        size_t n = pick_size(sizes, &c->rng);
        void *p = x_alloc(c, n);
        put(c, p, n);
        drop(c, p, n);
    }
    c->t->iterations = i;
}

/* Live-set replacement: each iteration frees a random slot (if occupied) and refills it. */
static void run_contention(ctx *c, int sizes, long live) {
    blk *slots = map_zeroed((size_t)live * sizeof(blk));
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        blk *b = &slots[rng_next(&c->rng) % (uint64_t)live];
        if (b->p) drop(c, b->p, b->n);
        b->n = pick_size(sizes, &c->rng);
        b->p = x_alloc(c, b->n);
        put(c, b->p, b->n);
    }
    for (long k = 0; k < live; k++)
        if (slots[k].p) drop(c, slots[k].p, slots[k].n);
    c->t->iterations = i;
    munmap(slots, (size_t)live * sizeof(blk));
}

/* Rounds of a growing live set: blocks accumulate until `live` iterations, then all are freed.
 * glibc: j = i % live; j%4 in {0,1} malloc, j%4 == 2 calloc, j%4 == 3 realloc of block j-1 to twice
 * its size (no new block).  native: na_alloc every iteration. */
static void run_growth(ctx *c, int sizes, long live) {
    blk *set = map_zeroed((size_t)live * sizeof(blk));
    long nset = 0;
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        long j = (long)(i % (uint64_t)live);
        if (j == 0) {
            for (long k = 0; k < nset; k++) drop(c, set[k].p, set[k].n);
            nset = 0;
        }
        size_t n = pick_size(sizes, &c->rng);
        if (opt.allocator == A_NATIVE || j % 4 < 2) {
            set[nset].p = x_alloc(c, n);
        } else if (j % 4 == 2) {
            set[nset].p = x_calloc(c, n);
            const uint8_t *z = set[nset].p;
            for (size_t k = 0; k < n; k++)
                if (z[k]) {
                    c->t->verify_errors++;
                    break;
                }
        } else {
            blk *prev = &set[nset - 1];
            if (!check(prev->p, prev->n)) c->t->verify_errors++;
            size_t nn = prev->n * 2;
            void *p = x_realloc(c, prev->p, nn);
            /* realloc must carry the old bytes over; they were written for the old address */
            if (!check_as(p, prev->p, prev->n)) c->t->verify_errors++;
            prev->p = p;
            prev->n = nn;
            put(c, p, nn);
            continue;
        }
        set[nset].n = n;
        put(c, set[nset].p, n);
        nset++;
    }
    for (long k = 0; k < nset; k++) drop(c, set[k].p, set[k].n);
    c->t->iterations = i;
    munmap(set, (size_t)live * sizeof(blk));
}

static void run_mmap_thrash(ctx *c) {
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        size_t n = MMAP_THRASH_BASE + rng_next(&c->rng) % (64 * 1024);
        void *p = x_alloc(c, n);
        put(c, p, n);
        drop(c, p, n);
    }
    c->t->iterations = i;
}

static void run_consolidation(ctx *c) {
    void *small[CONSOLIDATION_SMALL];
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        for (int k = 0; k < CONSOLIDATION_SMALL; k++) {
            small[k] = x_alloc(c, CONSOLIDATION_SMALL_SIZE);
            put(c, small[k], CONSOLIDATION_SMALL_SIZE);
        }
        for (int k = 0; k < CONSOLIDATION_SMALL; k++) drop(c, small[k], CONSOLIDATION_SMALL_SIZE);
        if (opt.allocator == A_NATIVE) {
            na_consolidate(c->arena);
            c->t->c[C_CONSOLIDATE]++;
        }
        /* a large-bin request with fastbins populated makes glibc run malloc_consolidate */
        void *big = x_alloc(c, CONSOLIDATION_LARGE_SIZE);
        put(c, big, CONSOLIDATION_LARGE_SIZE);
        drop(c, big, CONSOLIDATION_LARGE_SIZE);
    }
    c->t->iterations = i;
}

typedef struct churn_arg {
    na_arena_t *arena;
    uint64_t seed;
    int index;
} churn_arg;

static void *churn_thread(void *arg) {
    churn_arg *a = arg;
    ctx c = {.t = new_record(ROLE_CHURN, a->index), .arena = a->arena, .rng = a->seed};
    c.t->iterations = 1;
    for (int k = 0; k < CHURN_PAIRS; k++) {
        size_t n = pick_size(Z_SMALL, &c.rng);
        void *p = x_alloc(&c, n);
        put(&c, p, n);
        drop(&c, p, n);
    }
    return NULL;
}

static void run_churn(ctx *c) {
    uint64_t i = 0;
    for (; keep_going(i) && nrecords < MAX_RECORDS - 1; i++) {
        churn_arg a = {.arena = c->arena, .seed = rng_next(&c->rng), .index = c->t->index};
        pthread_t th;
        if (pthread_create(&th, NULL, churn_thread, &a) != 0) die("arena-workload: pthread_create failed\n");
        pthread_join(th, NULL);
    }
    c->t->iterations = i;
}

static void run_batch_contention(ctx *c, int sizes) {
    void *out[BATCH_N];
    uint64_t i = 0;
    for (; keep_going(i); i++) {
        size_t n = pick_size(sizes, &c->rng);
        size_t got = na_alloc_batch(c->arena, n, BATCH_N, out);
        c->t->c[C_BATCH]++;
        c->t->bytes_requested += n * BATCH_N;
        if (got != BATCH_N) die("arena-workload: na_alloc_batch returned %zu\n", got);
        for (int k = 0; k < BATCH_N; k++) put(c, out[k], n);
        for (int k = 0; k < BATCH_N; k++) drop(c, out[k], n);
    }
    c->t->iterations = i;
}

/* ---------------------------------------------------------------- threads */

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg;
    ctx c = {.t = new_record(ROLE_WORKER, index), .rng = rng_seed(opt.seed, (uint64_t)index)};
    if (opt.allocator == A_NATIVE) {
        if (opt.arena_per_thread) {
            c.arena = na_arena_create(opt.no_tcache ? NA_ARENA_NO_TCACHE : 0);
            c.t->c[C_CREATE]++;
            if (!c.arena) die("arena-workload: na_arena_create failed\n");
        } else {
            c.arena = shared_arena;
        }
    }
    int sizes = opt.sizes == Z_DEFAULT ? default_sizes() : opt.sizes;
    long live = opt.live > 0 ? opt.live : (opt.scenario == S_GROWTH ? 4096 : 64);
    pthread_barrier_wait(&start_barrier);
    switch (opt.scenario) {
    case S_FASTPATH: run_fastpath(&c, sizes); break;
    case S_CONTENTION: run_contention(&c, sizes, live); break;
    case S_GROWTH: run_growth(&c, sizes, live); break;
    case S_MMAP_THRASH: run_mmap_thrash(&c); break;
    case S_CONSOLIDATION: run_consolidation(&c); break;
    case S_CHURN: run_churn(&c); break;
    case S_BATCH_CONTENTION: run_batch_contention(&c, sizes); break;
    }
    /* per-thread arenas are destroyed by main after the join, once this thread's cache is flushed */
    return c.arena;
}

/* ---------------------------------------------------------------- output */

static char *out_buf;
static size_t out_len, out_cap;

static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out_buf + out_len, out_cap - out_len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= out_cap - out_len) die("arena-workload: report buffer overflow\n");
    out_len += (size_t)n;
}

static void emit_calls(const uint64_t *c) {
    int first = 1;
    emit("{");
    for (int k = 0; k < NCOUNT; k++) {
        const char *name = opt.allocator == A_GLIBC ? (k < glibc_ncount ? glibc_names[k] : NULL) : native_names[k];
        if (!name) continue;
        emit("%s\"%s\": %llu", first ? "" : ", ", name, (unsigned long long)c[k]);
        first = 0;
    }
    emit("}");
}

static void emit_stats(const struct na_stats *s, int narenas) {
    emit("{\"arenas\": %d", narenas);
#define F(name) emit(", \"" #name "\": %llu", (unsigned long long)s->name)
    F(bytes_in_use); F(bytes_free); F(bytes_mapped); F(frag_bytes); F(largest_free);
    emit(", \"fragmentation\": %.9g, \"largest_free_share\": %.9g", s->fragmentation, s->largest_free_share);
    F(allocs); F(frees); F(batches); F(batch_objects); F(consolidations); F(resets); F(grows);
    F(large_maps); F(large_unmaps); F(lock_waits); F(lock_acquisitions); F(chunks); F(slabs);
    F(large_blocks); F(slabs_released); F(chunks_released);
#undef F
    emit("}");
}

static void add_stats(struct na_stats *sum, const struct na_stats *s) {
    uint64_t largest = sum->largest_free > s->largest_free ? sum->largest_free : s->largest_free;
    uint64_t *d = (uint64_t *)sum;
    const uint64_t *x = (const uint64_t *)s;
    for (size_t k = 0; k < sizeof(*s) / sizeof(uint64_t); k++) d[k] += x[k];
    /* the two ratios are recomputed from the summed byte counts below */
    sum->fragmentation = sum->bytes_free ? (double)sum->frag_bytes / (double)sum->bytes_free : 0;
    sum->largest_free_share = 0;
    sum->largest_free = largest;
}

/* ---------------------------------------------------------------- main */

static void usage(int code) {
    static const char text[] =
        "usage: arena-workload [options]\n"
        "  --allocator glibc|native   allocator to drive (default glibc)\n"
        "  --scenario NAME            fastpath | contention | growth | mmap-thrash | consolidation |\n"
        "                             churn | batch-contention (native only)   (default fastpath)\n"
        "  --threads N                worker threads (default 1)\n"
        "  --iterations N             iterations per worker (default 10000; churn 100)\n"
        "  --duration SEC             run for SEC seconds instead of a fixed iteration count\n"
        "  --seed N                   RNG seed (default 1); runs with --threads 1 are deterministic\n"
        "  --sizes small|medium|large|mixed   request sizes (<=128 B, 129 B..1 KiB, 1 KiB..64 KiB)\n"
        "  --live N                   live-set size per worker (contention default 64, growth 4096)\n"
        "  --arena-per-thread         native: one arena per worker instead of one shared arena\n"
        "  --no-tcache                native: create arenas with NA_ARENA_NO_TCACHE (always on for contention)\n"
        "  --arena-max N              glibc: mallopt(M_ARENA_MAX, N) before starting threads\n"
        "  --delay SEC                sleep before starting\n"
        "  --wait-signal              print 'ready pid=N' on stderr and wait for SIGUSR1 before starting\n"
        "  --help                     this text\n"
        "Prints one JSON report on stdout; exit status 1 if any block failed verification.\n";
    ssize_t r = write(code ? 2 : 1, text, sizeof(text) - 1);
    (void)r;
    exit(code);
}

static int lookup(const char *v, const char *const *names, int n) {
    for (int k = 0; k < n; k++)
        if (names[k] && strcmp(v, names[k]) == 0) return k;
    return -1;
}

static long parse_long(const char *v, const char *what) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0) die("arena-workload: bad %s '%s'\n", what, v);
    return x;
}

static double parse_double(const char *v, const char *what) {
    char *end;
    double x = strtod(v, &end);
    if (*end || x < 0) die("arena-workload: bad %s '%s'\n", what, v);
    return x;
}

static void sleep_seconds(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"allocator", required_argument, 0, 'a'}, {"scenario", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'},   {"iterations", required_argument, 0, 'i'},
        {"duration", required_argument, 0, 'd'},  {"seed", required_argument, 0, 'S'},
        {"sizes", required_argument, 0, 'z'},     {"live", required_argument, 0, 'l'},
        {"arena-per-thread", no_argument, 0, 'P'}, {"no-tcache", no_argument, 0, 'T'},
        {"arena-max", required_argument, 0, 'm'}, {"delay", required_argument, 0, 'D'},
        {"wait-signal", no_argument, 0, 'w'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            if (strcmp(optarg, "glibc") == 0) opt.allocator = A_GLIBC;
            else if (strcmp(optarg, "native") == 0) opt.allocator = A_NATIVE;
            else die("arena-workload: unknown allocator '%s'\n", optarg);
            break;
        case 's':
            if ((opt.scenario = lookup(optarg, scenario_names, S_COUNT)) < 0)
                die("arena-workload: unknown scenario '%s'\n", optarg);
            break;
        case 't': opt.threads = (int)parse_long(optarg, "thread count"); break;
        case 'i': opt.iterations = parse_long(optarg, "iteration count"); break;
        case 'd': opt.duration = parse_double(optarg, "duration"); break;
        case 'S': opt.seed = (uint64_t)parse_long(optarg, "seed"); break;
        case 'z':
            if ((opt.sizes = lookup(optarg, size_names, 5)) <= 0) die("arena-workload: unknown sizes '%s'\n", optarg);
            break;
        case 'l': opt.live = parse_long(optarg, "live-set size"); break;
        case 'P': opt.arena_per_thread = 1; break;
        case 'T': opt.no_tcache = 1; break;
        case 'm': opt.arena_max = (int)parse_long(optarg, "arena max"); break;
        case 'D': opt.delay = parse_double(optarg, "delay"); break;
        case 'w': opt.wait_signal = 1; break;
        case 'h': usage(0); break;
        default: usage(2);
        }
    }
    if (optind < argc) die("arena-workload: unexpected argument '%s'\n", argv[optind]);
    if (opt.threads < 1 || opt.threads > 1024) die("arena-workload: --threads must be 1..1024\n");
    if (opt.live == 0) die("arena-workload: --live must be positive\n");
    if (opt.scenario == S_BATCH_CONTENTION && opt.allocator != A_NATIVE)
        die("arena-workload: batch-contention needs --allocator native\n");
    if (opt.duration > 0 && opt.iterations >= 0) die("arena-workload: give --iterations or --duration, not both\n");
    /* the thread cache would absorb every small request, so contention on native goes to the lock */
    if (opt.scenario == S_CONTENTION) opt.no_tcache = 1;
    if (opt.duration <= 0 && opt.iterations < 0) opt.iterations = opt.scenario == S_CHURN ? 100 : 10000;

    records = map_zeroed(MAX_RECORDS * sizeof(trec));
    out_cap = 64u << 20;
    out_buf = map_zeroed(out_cap);

    if (opt.delay > 0) sleep_seconds(opt.delay);
    if (opt.wait_signal) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        char msg[64];
        int n = snprintf(msg, sizeof(msg), "ready pid=%ld\n", (long)getpid());
        ssize_t r = write(2, msg, (size_t)n);
        (void)r;
        int sig;
        sigwait(&set, &sig);
    }

    trec *main_rec = new_record(ROLE_MAIN, -1);
    if (opt.allocator == A_GLIBC) {
        if (opt.arena_max > 0) mallopt(M_ARENA_MAX, opt.arena_max);
        /* a fixed threshold turns off glibc's dynamic raise, so every 256 KiB block stays mmapped */
        if (opt.scenario == S_MMAP_THRASH) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    } else if (!opt.arena_per_thread) {
        shared_arena = na_arena_create(opt.no_tcache ? NA_ARENA_NO_TCACHE : 0);
        main_rec->c[C_CREATE]++;
        if (!shared_arena) die("arena-workload: na_arena_create failed\n");
    }

    pthread_t *th = map_zeroed((size_t)opt.threads * sizeof(pthread_t));
    na_arena_t **arenas = map_zeroed((size_t)opt.threads * sizeof(na_arena_t *));
    pthread_barrier_init(&start_barrier, NULL, (unsigned)opt.threads + 1);
    for (int k = 0; k < opt.threads; k++)
        if (pthread_create(&th[k], NULL, worker, (void *)(intptr_t)k) != 0) die("arena-workload: pthread_create failed\n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (opt.duration > 0) {
        deadline = t0;
        deadline.tv_sec += (time_t)opt.duration;
        deadline.tv_nsec += (long)((opt.duration - (double)(time_t)opt.duration) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_barrier_wait(&start_barrier);
    for (int k = 0; k < opt.threads; k++) pthread_join(th[k], (void **)&arenas[k]);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    uint64_t elapsed = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t1.tv_nsec - (uint64_t)t0.tv_nsec;

    struct na_stats sum;
    memset(&sum, 0, sizeof(sum));
    int narenas = 0;
    if (opt.allocator == A_NATIVE) {
        struct na_stats s;
        if (opt.arena_per_thread) {
            for (int k = 0; k < opt.threads; k++) {
                na_stats(arenas[k], &s);
                add_stats(&sum, &s);
                na_arena_destroy(arenas[k]);
                main_rec->c[C_DESTROY]++;
                narenas++;
            }
        } else {
            na_stats(shared_arena, &s);
            add_stats(&sum, &s);
            na_arena_destroy(shared_arena);
            main_rec->c[C_DESTROY]++;
            narenas = 1;
        }
        sum.largest_free_share = sum.bytes_free ? (double)sum.largest_free / (double)sum.bytes_free : 0;
    }

    uint64_t total[NCOUNT] = {0}, errors = 0, iters = 0, requested = 0;
    for (uint32_t r = 0; r < nrecords; r++) {
        for (int k = 0; k < NCOUNT; k++) total[k] += records[r].c[k];
        errors += records[r].verify_errors;
        requested += records[r].bytes_requested;
        if (records[r].role == ROLE_WORKER) iters += records[r].iterations;
    }

    emit("{\"allocator\": \"%s\", \"scenario\": \"%s\", \"threads\": %d, \"seed\": %llu, \"sizes\": \"%s\"",
         opt.allocator == A_GLIBC ? "glibc" : "native", scenario_names[opt.scenario], opt.threads,
         (unsigned long long)opt.seed, size_names[opt.sizes == Z_DEFAULT ? default_sizes() : opt.sizes]);
    emit(", \"live\": %ld", opt.live > 0 ? opt.live : (opt.scenario == S_GROWTH ? 4096L : 64L));
    if (opt.iterations >= 0)
        emit(", \"iterations\": %ld, \"duration_s\": null", opt.iterations);
    else
        emit(", \"iterations\": null, \"duration_s\": %.9g", opt.duration);
    emit(", \"iterations_total\": %llu, \"bytes_requested\": %llu", (unsigned long long)iters,
         (unsigned long long)requested);
    emit(", \"arena_per_thread\": %s", opt.arena_per_thread ? "true" : "false");
    emit(", \"tcache\": %s", opt.allocator == A_NATIVE && !opt.no_tcache ? "true" : "false");
    emit(", \"pid\": %ld, \"elapsed_ns\": %llu, \"calls\": ", (long)getpid(), (unsigned long long)elapsed);
    emit_calls(total);
    emit(", \"per_thread\": [");
    for (uint32_t r = 0; r < nrecords; r++) {
        emit("%s{\"tid\": %ld, \"role\": \"%s\", \"index\": %d, \"iterations\": %llu, \"bytes_requested\": %llu, "
             "\"calls\": ",
             r ? ", " : "", records[r].tid, role_names[records[r].role], records[r].index,
             (unsigned long long)records[r].iterations, (unsigned long long)records[r].bytes_requested);
        emit_calls(records[r].c);
        emit("}");
    }
    emit("]");
    if (opt.allocator == A_NATIVE) {
        emit(", \"native_stats\": ");
        emit_stats(&sum, narenas);
    }
    emit(", \"verify_errors\": %llu}\n", (unsigned long long)errors);
    for (size_t off = 0; off < out_len;) {
        ssize_t w = write(1, out_buf + off, out_len - off);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return 2;
        }
        off += (size_t)w;
    }
    return errors ? 1 : 0;
}
