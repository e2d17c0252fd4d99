/* native_alloc implementation.  The exported traced symbols live in na_entry.S (nop5 + jmp); the
 * *_impl functions here are hidden so nothing but those stubs can be interposed or probed by name. */
#define _GNU_SOURCE
#include "native_alloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Magic words are the first u32 of every header so na_free can tell what a pointer is. */
#define OBJ_LIVE 0x4f424a4cu   /* slab object handed out */
#define OBJ_FREE 0x4f424a46u   /* slab object in a slab free list or a thread cache */
#define SPAN_MAGIC 0x5350414eu
#define LARGE_MAGIC 0x4c415247u
#define END_MAGIC 0x454e4421u

#define SPAN_FREE 1u
#define SPAN_PREV_FREE 2u
#define SPAN_SLAB 4u
#define SPAN_SIZE_MASK (~15u)
#define NBINS 21

typedef struct slab slab_t;

typedef struct obj_hdr {
    uint32_t magic;
    uint32_t cls;
    slab_t *slab;
} obj_hdr;

typedef struct span {
    uint32_t magic;
    uint32_t size_flags; /* size (multiple of 16, < 4 GiB) | SPAN_* flags */
    na_arena_t *arena;
} span_t;

/* Free spans keep their list links in the payload and their size in the last 8 bytes (footer) so the
 * next span can find its start when coalescing backwards. */
typedef struct free_links {
    span_t *next, *prev;
} free_links;

typedef struct large {
    struct large *next, *prev;
    size_t map_size;
    size_t usable;
    uint32_t magic;
    uint32_t pad;
    na_arena_t *arena;
} large_t; /* 48 bytes: the last 16 double as the block header, so the user pointer is base + 48 */

struct slab {
    slab_t *next, *prev; /* partial list: slabs with at least one free slot */
    na_arena_t *arena;
    uint32_t cls, stride;
    uint32_t nobj, nfree; /* nfree counts never-used slots too */
    uint32_t bump;        /* slots below bump have been handed out at least once */
    uint32_t in_partial;
    obj_hdr *free_list;
    char *objs;
};

typedef struct chunk {
    struct chunk *next, *prev;
    size_t size;
    na_arena_t *arena;
    uint64_t pad[4];
} chunk_t;

_Static_assert(sizeof(obj_hdr) == NA_SPAN_HEADER, "object header");
_Static_assert(sizeof(span_t) == NA_SPAN_HEADER, "span header");
_Static_assert(sizeof(large_t) == 48, "large header");
_Static_assert(sizeof(chunk_t) == NA_CHUNK_HEADER, "chunk header");

struct na_arena {
    pthread_mutex_t lock;
    uint64_t uid;   /* distinguishes an arena from a destroyed one at the same address */
    uint64_t epoch; /* bumped by na_reset so thread caches drop stale objects */
    unsigned flags;
    chunk_t *chunks;
    span_t *bins[NBINS];
    slab_t *partial[NA_NUM_CLASSES];
    large_t *large;
    uint64_t nchunks, nslabs, nlarge, large_mapped;
    uint64_t bytes_in_use;
    /* updated without the lock on the thread-cache fast path */
    uint64_t allocs, frees;
    /* updated under the lock */
    uint64_t batches, batch_objects, consolidations, resets, grows, large_maps, large_unmaps;
    uint64_t lock_waits, lock_acquisitions, slabs_released, chunks_released;
    na_arena_t *reg_next;
};

static const uint32_t class_size[NA_NUM_CLASSES] = {16,  32,  48,  64,  80,  96,  112, 128, 160, 192,
                                                    224, 256, 320, 384, 448, 512, 640, 768, 896, 1024};

/* Hidden aliases of the traced entry points (na_entry.S): internal slow paths call through them so
 * the probes see those calls too, without going through the PLT. */
HIDDEN size_t na__alloc_batch_entry(na_arena_t *a, size_t size, size_t n, void **out);
HIDDEN void *na__grow_entry(na_arena_t *a, size_t min_bytes);
HIDDEN void na__lock_wait_entry(na_arena_t *a);

/* ---------------------------------------------------------------- helpers */

static void na_die(const char *msg) {
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
    abort();
}

static inline size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

static inline int size_to_class(size_t n) {
    if (n <= 128) return n ? (int)((n - 1) >> 4) : 0;
    if (n <= 256) return 8 + (int)((n - 129) >> 5);
    if (n <= 512) return 12 + (int)((n - 257) >> 6);
    return 16 + (int)((n - 513) >> 7);
}

static inline void arena_lock(na_arena_t *a) {
    if (UNLIKELY(pthread_mutex_trylock(&a->lock) != 0)) na__lock_wait_entry(a);
    a->lock_acquisitions++;
}

static inline void arena_unlock(na_arena_t *a) { pthread_mutex_unlock(&a->lock); }

static inline size_t span_size(const span_t *s) { return s->size_flags & SPAN_SIZE_MASK; }
static inline span_t *span_at(void *p, size_t off) { return (span_t *)((char *)p + off); }
static inline free_links *links(span_t *s) { return (free_links *)(s + 1); }

static inline int bin_of(size_t size) {
    int b = 63 - __builtin_clzll(size);
    return b >= NBINS ? NBINS - 1 : b;
}

static void bin_insert(na_arena_t *a, span_t *s) {
    int b = bin_of(span_size(s));
    free_links *l = links(s);
    l->prev = NULL;
    l->next = a->bins[b];
    if (l->next) links(l->next)->prev = s;
    a->bins[b] = s;
}

static void bin_remove(na_arena_t *a, span_t *s) {
    free_links *l = links(s);
    if (l->prev)
        links(l->prev)->next = l->next;
    else
        a->bins[bin_of(span_size(s))] = l->next;
    if (l->next) links(l->next)->prev = l->prev;
}

/* Turn s (not in any bin, previous span known not free) into a free span of `size` bytes. */
static void span_make_free(na_arena_t *a, span_t *s, size_t size) {
    s->magic = SPAN_MAGIC;
    s->arena = a;
    s->size_flags = (uint32_t)size | SPAN_FREE;
    *(uint64_t *)((char *)s + size - 8) = size;
    span_at(s, size)->size_flags |= SPAN_PREV_FREE;
    bin_insert(a, s);
}

/* Return an in-use span to the heap, merging it with free neighbours so no two free spans touch. */
static void span_release(na_arena_t *a, span_t *s) {
    size_t size = span_size(s);
    span_t *n = span_at(s, size);
    if (n->size_flags & SPAN_FREE) {
        bin_remove(a, n);
        size += span_size(n);
    }
    if (s->size_flags & SPAN_PREV_FREE) {
        size_t ps = *(uint64_t *)((char *)s - 8);
        span_t *p = (span_t *)((char *)s - ps);
        bin_remove(a, p);
        size += ps;
        s = p;
    }
    span_make_free(a, s, size);
}

static void chunk_init_free(na_arena_t *a, chunk_t *c) {
    span_t *end = span_at(c, c->size - NA_CHUNK_TRAILER);
    end->magic = END_MAGIC;
    end->size_flags = NA_CHUNK_TRAILER;
    end->arena = a;
    span_t *first = span_at(c, NA_CHUNK_HEADER);
    first->size_flags = 0;
    span_make_free(a, first, c->size - NA_CHUNK_HEADER - NA_CHUNK_TRAILER);
}

/* First fit over size-segregated bins; splits from the front so fresh chunks fill in address order. */
static span_t *span_take(na_arena_t *a, size_t need) {
    span_t *s = NULL;
    for (int b = bin_of(need); b < NBINS && !s; b++)
        for (span_t *t = a->bins[b]; t; t = links(t)->next)
            if (span_size(t) >= need) {
                s = t;
                break;
            }
    if (!s) return NULL;
    bin_remove(a, s);
    size_t sz = span_size(s);
    if (sz - need >= NA_MIN_FREE_SPAN) {
        span_t *r = span_at(s, need);
        r->size_flags = 0;
        span_make_free(a, r, sz - need);
        sz = need;
    } else {
        span_at(s, sz)->size_flags &= ~SPAN_PREV_FREE;
    }
    s->magic = SPAN_MAGIC;
    s->arena = a;
    s->size_flags = (uint32_t)sz; /* a free span's predecessor is never free */
    return s;
}

static span_t *span_get(na_arena_t *a, size_t need) {
    span_t *s = span_take(a, need);
    if (!s && na__grow_entry(a, need)) s = span_take(a, need);
    return s;
}

/* ---------------------------------------------------------------- slabs */

static void partial_insert(na_arena_t *a, slab_t *sl) {
    sl->prev = NULL;
    sl->next = a->partial[sl->cls];
    if (sl->next) sl->next->prev = sl;
    a->partial[sl->cls] = sl;
    sl->in_partial = 1;
}

static void partial_remove(na_arena_t *a, slab_t *sl) {
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        a->partial[sl->cls] = sl->next;
    if (sl->next) sl->next->prev = sl->prev;
    sl->in_partial = 0;
}

static slab_t *slab_new(na_arena_t *a, int cls) {
    span_t *s = span_get(a, NA_SLAB_SPAN);
    if (!s) return NULL;
    s->size_flags |= SPAN_SLAB;
    slab_t *sl = (slab_t *)(s + 1);
    sl->arena = a;
    sl->cls = (uint32_t)cls;
    sl->stride = class_size[cls] + NA_SPAN_HEADER;
    sl->objs = (char *)sl + round16(sizeof(slab_t));
    sl->nobj = (uint32_t)(((char *)s + span_size(s) - sl->objs) / sl->stride);
    sl->nfree = sl->nobj;
    sl->bump = 0;
    sl->free_list = NULL;
    a->nslabs++;
    partial_insert(a, sl);
    return sl;
}

static void *class_alloc_locked(na_arena_t *a, int cls) {
    slab_t *sl = a->partial[cls];
    if (!sl && !(sl = slab_new(a, cls))) return NULL;
    obj_hdr *h;
    if (sl->free_list) {
        h = sl->free_list;
        sl->free_list = *(obj_hdr **)(h + 1);
    } else {
        h = (obj_hdr *)(sl->objs + (size_t)sl->bump * sl->stride);
        sl->bump++;
        h->slab = sl;
        h->cls = (uint32_t)cls;
    }
    h->magic = OBJ_LIVE;
    if (--sl->nfree == 0) partial_remove(a, sl);
    a->bytes_in_use += class_size[cls];
    return h + 1;
}

static void class_free_locked(na_arena_t *a, obj_hdr *h) {
    slab_t *sl = h->slab;
    h->magic = OBJ_FREE;
    *(obj_hdr **)(h + 1) = sl->free_list;
    sl->free_list = h;
    if (sl->nfree++ == 0) partial_insert(a, sl);
    a->bytes_in_use -= class_size[sl->cls];
}

/* ---------------------------------------------------------------- medium and large */

static void *medium_alloc_locked(na_arena_t *a, size_t size) {
    span_t *s = span_get(a, round16(size) + NA_SPAN_HEADER);
    if (!s) return NULL;
    a->bytes_in_use += span_size(s) - NA_SPAN_HEADER;
    return s + 1;
}

static void *large_alloc_locked(na_arena_t *a, size_t size) {
    long page = sysconf(_SC_PAGESIZE);
    if (size > SIZE_MAX / 2) return NULL;
    size_t map = (round16(size) + sizeof(large_t) + (size_t)page - 1) & ~((size_t)page - 1);
    void *m = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    large_t *l = m;
    l->map_size = map;
    l->usable = map - sizeof(large_t);
    l->magic = LARGE_MAGIC;
    l->arena = a;
    l->prev = NULL;
    l->next = a->large;
    if (l->next) l->next->prev = l;
    a->large = l;
    a->nlarge++;
    a->large_mapped += map;
    a->large_maps++;
    a->bytes_in_use += l->usable;
    return l + 1;
}

static void large_unlink_locked(na_arena_t *a, large_t *l) {
    if (l->prev)
        l->prev->next = l->next;
    else
        a->large = l->next;
    if (l->next) l->next->prev = l->prev;
    a->nlarge--;
    a->large_mapped -= l->map_size;
    a->bytes_in_use -= l->usable;
}

static void *alloc_locked(na_arena_t *a, size_t size) {
    if (size <= NA_SMALL_MAX) return class_alloc_locked(a, size_to_class(size));
    if (size <= NA_LARGE_THRESHOLD) return medium_alloc_locked(a, size);
    return large_alloc_locked(a, size);
}

/* ---------------------------------------------------------------- registry and thread caches */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static na_arena_t *reg_head;
static uint64_t reg_next_uid = 1;

struct tc_bin {
    uint32_t count;
    void *objs[NA_TCACHE_MAX];
};

struct tc_slot {
    na_arena_t *arena;
    uint64_t uid, epoch;
    struct tc_bin bins[NA_NUM_CLASSES];
};

struct tcache {
    int registered;
    unsigned victim;
    struct tc_slot slots[NA_TCACHE_ARENAS];
};

static __thread struct tcache tc;
static pthread_once_t tc_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t tc_key;

static int arena_is_live(na_arena_t *a, uint64_t uid) {
    for (na_arena_t *r = reg_head; r; r = r->reg_next)
        if (r == a && r->uid == uid) return 1;
    return 0;
}

static void slot_clear(struct tc_slot *s) {
    for (int i = 0; i < NA_NUM_CLASSES; i++) s->bins[i].count = 0;
}

/* Hand a slot's objects back to its arena if that arena still exists in the same epoch; otherwise
 * they belong to memory that was reset or unmapped and are simply forgotten. */
static void slot_flush_checked(struct tc_slot *s) {
    if (!s->arena) return;
    pthread_mutex_lock(&reg_lock);
    na_arena_t *a = s->arena;
    if (arena_is_live(a, s->uid) && __atomic_load_n(&a->epoch, __ATOMIC_ACQUIRE) == s->epoch) {
        arena_lock(a);
        for (int i = 0; i < NA_NUM_CLASSES; i++)
            for (uint32_t k = 0; k < s->bins[i].count; k++)
                class_free_locked(a, (obj_hdr *)s->bins[i].objs[k] - 1);
        arena_unlock(a);
    }
    pthread_mutex_unlock(&reg_lock);
    slot_clear(s);
    s->arena = NULL;
}

static void tc_thread_exit(void *arg) {
    struct tcache *t = arg;
    for (int i = 0; i < NA_TCACHE_ARENAS; i++) slot_flush_checked(&t->slots[i]);
}

static void tc_make_key(void) {
    if (pthread_key_create(&tc_key, tc_thread_exit) != 0) na_die("native_alloc: pthread_key_create failed\n");
}

static struct tc_slot *tc_slot_for(na_arena_t *a) {
    if (a->flags & NA_ARENA_NO_TCACHE) return NULL;
    uint64_t ep = __atomic_load_n(&a->epoch, __ATOMIC_ACQUIRE);
    struct tc_slot *s = NULL;
    for (int i = 0; i < NA_TCACHE_ARENAS; i++)
        if (tc.slots[i].arena == a) {
            s = &tc.slots[i];
            break;
        }
    if (LIKELY(s && s->uid == a->uid && s->epoch == ep)) return s;
    if (s) {
        /* same address but a destroyed arena or an older epoch: its cached objects are gone */
        slot_clear(s);
    } else {
        if (UNLIKELY(!tc.registered)) {
            pthread_once(&tc_key_once, tc_make_key);
            pthread_setspecific(tc_key, &tc);
            tc.registered = 1;
        }
        for (int i = 0; i < NA_TCACHE_ARENAS && !s; i++)
            if (!tc.slots[i].arena) s = &tc.slots[i];
        if (!s) {
            s = &tc.slots[tc.victim++ % NA_TCACHE_ARENAS];
            slot_flush_checked(s);
        }
    }
    s->arena = a;
    s->uid = a->uid;
    s->epoch = ep;
    return s;
}

/* Give the oldest half of a full cache bin back to the arena under one lock acquisition. */
static void tc_flush_bin(na_arena_t *a, struct tc_bin *b) {
    uint32_t n = NA_TCACHE_MAX / 2;
    arena_lock(a);
    for (uint32_t k = 0; k < n; k++) class_free_locked(a, (obj_hdr *)b->objs[k] - 1);
    arena_unlock(a);
    memmove(b->objs, b->objs + n, (b->count - n) * sizeof(void *));
    b->count -= n;
}

/* ---------------------------------------------------------------- public API */

NA_API na_arena_t *na_arena_create(unsigned flags) {
    /* mmap rather than malloc so tracing glibc malloc in the same process sees none of our bookkeeping */
    size_t sz = (sizeof(na_arena_t) + 4095) & ~(size_t)4095;
    void *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    na_arena_t *a = m;
    memset(a, 0, sizeof(*a));
    if (pthread_mutex_init(&a->lock, NULL) != 0) {
        munmap(m, sz);
        errno = ENOMEM;
        return NULL;
    }
    a->flags = flags;
    pthread_mutex_lock(&reg_lock);
    a->uid = reg_next_uid++;
    a->reg_next = reg_head;
    reg_head = a;
    pthread_mutex_unlock(&reg_lock);
    return a;
}

NA_API void na_arena_destroy(na_arena_t *a) {
    if (!a) return;
    pthread_mutex_lock(&reg_lock);
    for (na_arena_t **pp = &reg_head; *pp; pp = &(*pp)->reg_next)
        if (*pp == a) {
            *pp = a->reg_next;
            break;
        }
    pthread_mutex_unlock(&reg_lock);
    for (chunk_t *c = a->chunks, *n; c; c = n) {
        n = c->next;
        munmap(c, c->size);
    }
    for (large_t *l = a->large, *n; l; l = n) {
        n = l->next;
        munmap(l, l->map_size);
    }
    pthread_mutex_destroy(&a->lock);
    munmap(a, (sizeof(na_arena_t) + 4095) & ~(size_t)4095);
}

HIDDEN void *na_alloc_impl(na_arena_t *a, size_t size) {
    if (UNLIKELY(!a)) {
        errno = EINVAL;
        return NULL;
    }
    void *p;
    if (size <= NA_SMALL_MAX) {
        int cls = size_to_class(size);
        struct tc_slot *s = tc_slot_for(a);
        if (s) {
            struct tc_bin *b = &s->bins[cls];
            if (UNLIKELY(b->count == 0)) b->count = (uint32_t)na__alloc_batch_entry(a, class_size[cls], NA_TCACHE_BATCH, b->objs);
            if (UNLIKELY(b->count == 0)) {
                errno = ENOMEM;
                return NULL;
            }
            p = b->objs[--b->count];
            ((obj_hdr *)p - 1)->magic = OBJ_LIVE;
            __atomic_fetch_add(&a->allocs, 1, __ATOMIC_RELAXED);
            return p;
        }
    }
    arena_lock(a);
    p = alloc_locked(a, size);
    arena_unlock(a);
    if (UNLIKELY(!p)) {
        errno = ENOMEM;
        return NULL;
    }
    __atomic_fetch_add(&a->allocs, 1, __ATOMIC_RELAXED);
    return p;
}

HIDDEN void na_free_impl(na_arena_t *a, void *p) {
    if (!p) return;
    uint32_t magic = *(uint32_t *)((char *)p - NA_SPAN_HEADER);
    na_arena_t *owner;
    if (magic == OBJ_LIVE) {
        obj_hdr *h = (obj_hdr *)p - 1;
        owner = h->slab->arena;
        if (UNLIKELY(a && a != owner)) na_die("na_free(): block belongs to another arena\n");
        h->magic = OBJ_FREE;
        struct tc_slot *s = tc_slot_for(owner);
        if (s) {
            struct tc_bin *b = &s->bins[h->cls];
            if (b->count == NA_TCACHE_MAX) tc_flush_bin(owner, b);
            b->objs[b->count++] = p;
        } else {
            arena_lock(owner);
            class_free_locked(owner, h);
            arena_unlock(owner);
        }
    } else if (magic == SPAN_MAGIC) {
        span_t *s = (span_t *)p - 1;
        owner = s->arena;
        if (UNLIKELY(a && a != owner)) na_die("na_free(): block belongs to another arena\n");
        arena_lock(owner);
        /* checked under the lock: neighbouring frees update this header's PREV_FREE bit */
        if (UNLIKELY(s->size_flags & (SPAN_FREE | SPAN_SLAB))) na_die("na_free(): double free or invalid pointer\n");
        owner->bytes_in_use -= span_size(s) - NA_SPAN_HEADER;
        span_release(owner, s);
        arena_unlock(owner);
    } else if (magic == LARGE_MAGIC) {
        large_t *l = (large_t *)p - 1;
        owner = l->arena;
        if (UNLIKELY(a && a != owner)) na_die("na_free(): block belongs to another arena\n");
        arena_lock(owner);
        large_unlink_locked(owner, l);
        owner->large_unmaps++;
        arena_unlock(owner);
        l->magic = 0;
        munmap(l, l->map_size);
    } else if (magic == OBJ_FREE) {
        na_die("na_free(): double free\n");
    } else {
        na_die("na_free(): invalid pointer\n");
    }
    __atomic_fetch_add(&owner->frees, 1, __ATOMIC_RELAXED);
}

HIDDEN size_t na_alloc_batch_impl(na_arena_t *a, size_t size, size_t n, void **out) {
    if (!a || (!out && n)) return 0;
    size_t i = 0;
    arena_lock(a);
    a->batches++;
    for (; i < n; i++) {
        void *p = alloc_locked(a, size);
        if (!p) break;
        out[i] = p;
    }
    a->batch_objects += i;
    arena_unlock(a);
    return i;
}

HIDDEN size_t na_consolidate_impl(na_arena_t *a) {
    if (!a) return 0;
    size_t released = 0;
    arena_lock(a);
    a->consolidations++;
    for (int cls = 0; cls < NA_NUM_CLASSES; cls++) {
        for (slab_t *sl = a->partial[cls], *n; sl; sl = n) {
            n = sl->next;
            if (sl->nfree != sl->nobj) continue;
            partial_remove(a, sl);
            span_t *s = (span_t *)sl - 1;
            s->size_flags &= ~SPAN_SLAB;
            span_release(a, s);
            a->nslabs--;
            a->slabs_released++;
        }
    }
    for (chunk_t *c = a->chunks, *n; c; c = n) {
        n = c->next;
        span_t *first = span_at(c, NA_CHUNK_HEADER);
        if (!(first->size_flags & SPAN_FREE) || span_size(first) != c->size - NA_CHUNK_HEADER - NA_CHUNK_TRAILER)
            continue;
        bin_remove(a, first);
        if (c->prev)
            c->prev->next = c->next;
        else
            a->chunks = c->next;
        if (c->next) c->next->prev = c->prev;
        a->nchunks--;
        a->chunks_released++;
        released += c->size;
        munmap(c, c->size);
    }
    arena_unlock(a);
    return released;
}

HIDDEN void na_reset_impl(na_arena_t *a) {
    if (!a) return;
    arena_lock(a);
    __atomic_fetch_add(&a->epoch, 1, __ATOMIC_RELEASE);
    a->resets++;
    memset(a->bins, 0, sizeof(a->bins));
    memset(a->partial, 0, sizeof(a->partial));
    for (chunk_t *c = a->chunks; c; c = c->next) chunk_init_free(a, c);
    a->nslabs = 0;
    for (large_t *l = a->large, *n; l; l = n) {
        n = l->next;
        munmap(l, l->map_size);
    }
    a->large = NULL;
    a->nlarge = 0;
    a->large_mapped = 0;
    a->bytes_in_use = 0;
    arena_unlock(a);
}

HIDDEN void *na_grow_impl(na_arena_t *a, size_t min_bytes) {
    size_t size = NA_CHUNK_SIZE;
    size_t need = min_bytes + NA_CHUNK_HEADER + NA_CHUNK_TRAILER;
    if (need > size) size = (need + NA_CHUNK_SIZE - 1) & ~((size_t)NA_CHUNK_SIZE - 1);
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    chunk_t *c = m;
    c->size = size;
    c->arena = a;
    c->prev = NULL;
    c->next = a->chunks;
    if (c->next) c->next->prev = c;
    a->chunks = c;
    a->nchunks++;
    a->grows++;
    chunk_init_free(a, c);
    return c;
}

HIDDEN void na_lock_wait_impl(na_arena_t *a) {
    pthread_mutex_lock(&a->lock);
    a->lock_waits++;
}

NA_API int na_stats(na_arena_t *a, struct na_stats *o) {
    if (!a || !o) return -1;
    memset(o, 0, sizeof(*o));
    arena_lock(a);
    for (int b = 0; b < NBINS; b++)
        for (span_t *s = a->bins[b]; s; s = links(s)->next) {
            uint64_t sz = span_size(s);
            o->bytes_free += sz;
            if (sz < NA_MIN_SPAN_REQUEST) o->frag_bytes += sz;
            if (sz > o->largest_free) o->largest_free = sz;
        }
    for (int cls = 0; cls < NA_NUM_CLASSES; cls++)
        for (slab_t *sl = a->partial[cls]; sl; sl = sl->next) {
            o->bytes_free += (uint64_t)sl->nfree * class_size[cls];
            if (sl->nfree && class_size[cls] > o->largest_free) o->largest_free = class_size[cls];
        }
    o->bytes_in_use = a->bytes_in_use;
    o->bytes_mapped = a->large_mapped;
    for (chunk_t *c = a->chunks; c; c = c->next) o->bytes_mapped += c->size;
    o->batches = a->batches;
    o->batch_objects = a->batch_objects;
    o->consolidations = a->consolidations;
    o->resets = a->resets;
    o->grows = a->grows;
    o->large_maps = a->large_maps;
    o->large_unmaps = a->large_unmaps;
    o->lock_waits = a->lock_waits;
    o->lock_acquisitions = a->lock_acquisitions;
    o->chunks = a->nchunks;
    o->slabs = a->nslabs;
    o->large_blocks = a->nlarge;
    o->slabs_released = a->slabs_released;
    o->chunks_released = a->chunks_released;
    arena_unlock(a);
    o->allocs = __atomic_load_n(&a->allocs, __ATOMIC_RELAXED);
    o->frees = __atomic_load_n(&a->frees, __ATOMIC_RELAXED);
    if (o->bytes_free) {
        o->fragmentation = (double)o->frag_bytes / (double)o->bytes_free;
        o->largest_free_share = (double)o->largest_free / (double)o->bytes_free;
    }
    return 0;
}

NA_API size_t na_usable_size(const void *p) {
    if (!p) return 0;
    const char *h = (const char *)p - NA_SPAN_HEADER;
    uint32_t magic = *(const uint32_t *)h;
    if (magic == OBJ_LIVE) return class_size[((const obj_hdr *)h)->cls];
    if (magic == SPAN_MAGIC) return span_size((const span_t *)h) - NA_SPAN_HEADER;
    if (magic == LARGE_MAGIC) return ((const large_t *)p - 1)->usable;
    return 0;
}
