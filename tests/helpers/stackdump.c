/*
 * Test helper for tracer/unwind.py: reaches a known call chain, then dumps what a BPF probe would see.
 *
 * Built by tests/test_unwind.py with gcc -O2 -g -fomit-frame-pointer -pthread, so no frame in this
 * program (nor in Debian's glibc) has a frame pointer to follow.
 *
 *   stackdump MODE DEPTH OUTPUT [CAPTURE_BYTES]
 *
 * MODE chooses how the chain reaches leaf():
 *   main    main -> outer_a -> outer_b -> recurse x (DEPTH+1) -> leaf
 *   thread  start_thread -> worker -> outer_a -> outer_b -> recurse x (DEPTH+1) -> leaf
 *   qsort   ... recurse -> sort_through_libc -> qsort (glibc) -> compare_ints -> leaf
 *   signal  ... recurse -> raise (glibc) -> signal frame -> on_signal -> leaf
 *
 * leaf() reads rip, rsp, rbp, rbx, r12-r15 in one asm block (so all describe the same instruction) and
 * copies the stack from rsp up to CAPTURE_BYTES, clamped to the thread's stack end. OUTPUT gets:
 *   "ATSD" u32 version=1 | u64 rip rsp rbp rbx r12 r13 r14 r15 | u64 n, n stack bytes | u64 m, m bytes of
 *   /proc/self/maps
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEEP __attribute__((noinline, noclone, used))

struct captured_registers {
    uint64_t rip, rsp, rbp, rbx, r12, r13, r14, r15;
};

static const char *output_path;
static size_t capture_bytes = 65536;
static int depth;
static const char *mode;
volatile int sink;
static volatile int compare_captured;

static uint64_t stack_end_of_this_thread(void) {
    pthread_attr_t attributes;
    void *address = NULL;
    size_t size = 0;
    /* For the main thread glibc derives this from the [stack] line of /proc/self/maps. */
    if (pthread_getattr_np(pthread_self(), &attributes) != 0) {
        return 0;
    }
    pthread_attr_getstack(&attributes, &address, &size);
    pthread_attr_destroy(&attributes);
    return (uint64_t)(uintptr_t)address + size;
}

static char *read_maps(size_t *length) {
    FILE *maps = fopen("/proc/self/maps", "r");
    size_t capacity = 1 << 16, used = 0;
    char *text = malloc(capacity);
    if (maps == NULL || text == NULL) {
        perror("maps");
        exit(2);
    }
    for (;;) {
        size_t got = fread(text + used, 1, capacity - used, maps);
        used += got;
        if (used < capacity) {
            break;
        }
        capacity *= 2;
        text = realloc(text, capacity);
        if (text == NULL) {
            exit(2);
        }
    }
    fclose(maps);
    *length = used;
    return text;
}

KEEP void write_dump(const struct captured_registers *registers) {
    uint64_t end = stack_end_of_this_thread();
    uint64_t length = capture_bytes;
    if (end > registers->rsp && end - registers->rsp < length) {
        length = end - registers->rsp;
    }
    /* Copy first, before any further call can disturb the frames above rsp. */
    unsigned char *copy = malloc(length);
    memcpy(copy, (const void *)(uintptr_t)registers->rsp, length);
    size_t maps_length = 0;
    char *maps = read_maps(&maps_length);

    FILE *output = fopen(output_path, "wb");
    if (output == NULL) {
        perror(output_path);
        exit(2);
    }
    uint32_t version = 1;
    uint64_t maps_length64 = maps_length;
    fwrite("ATSD", 1, 4, output);
    fwrite(&version, sizeof version, 1, output);
    fwrite(registers, sizeof *registers, 1, output);
    fwrite(&length, sizeof length, 1, output);
    fwrite(copy, 1, length, output);
    fwrite(&maps_length64, sizeof maps_length64, 1, output);
    fwrite(maps, 1, maps_length, output);
    fclose(output);
    free(copy);
    free(maps);
}

KEEP int leaf(int value) {
    struct captured_registers registers;
    /* rax is clobbered so the compiler cannot put the pointer operand there. */
    __asm__ volatile(
        "lea 0(%%rip), %%rax\n\t"
        "mov %%rax, 0(%0)\n\t"
        "mov %%rsp, 8(%0)\n\t"
        "mov %%rbp, 16(%0)\n\t"
        "mov %%rbx, 24(%0)\n\t"
        "mov %%r12, 32(%0)\n\t"
        "mov %%r13, 40(%0)\n\t"
        "mov %%r14, 48(%0)\n\t"
        "mov %%r15, 56(%0)\n\t"
        :
        : "r"(&registers)
        : "rax", "memory");
    write_dump(&registers);
    return value + sink;
}

KEEP int compare_ints(const void *left, const void *right) {
    int a = *(const int *)left, b = *(const int *)right;
    if (!compare_captured) {
        compare_captured = 1;
        sink += leaf(a);
    }
    return (a > b) - (a < b);
}

KEEP int sort_through_libc(int value) {
    int numbers[16];
    for (int index = 0; index < 16; index++) {
        numbers[index] = (index * 7 + value) % 16;
    }
    qsort(numbers, 16, sizeof numbers[0], compare_ints);
    return numbers[0] + sink;
}

KEEP void on_signal(int signal_number) {
    sink += leaf(signal_number);
}

KEEP int reach_leaf(int value) {
    int result;
    if (strcmp(mode, "qsort") == 0) {
        result = sort_through_libc(value);
    } else if (strcmp(mode, "signal") == 0) {
        result = raise(SIGUSR1);
    } else {
        result = leaf(value);
    }
    return result + sink;
}

KEEP int recurse(int remaining, int value) {
    /* A fixed, non-trivial frame so the recursion spends real stack. */
    volatile char padding[200];
    padding[0] = (char)value;
    padding[199] = (char)remaining;
    int result = remaining > 0 ? recurse(remaining - 1, value + 1) : reach_leaf(value);
    return result + padding[0] + padding[199];
}

KEEP int outer_b(int value) {
    return recurse(depth, value) + sink;
}

KEEP int outer_a(int value) {
    return outer_b(value + 1) + sink;
}

KEEP void *worker(void *argument) {
    sink += outer_a((int)(intptr_t)argument);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s main|thread|qsort|signal DEPTH OUTPUT [CAPTURE_BYTES]\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    depth = atoi(argv[2]);
    output_path = argv[3];
    if (argc > 4) {
        capture_bytes = strtoul(argv[4], NULL, 0);
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGUSR1, &action, NULL);

    if (strcmp(mode, "thread") == 0) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, worker, (void *)(intptr_t)3) != 0) {
            return 2;
        }
        pthread_join(thread, NULL);
    } else {
        sink += outer_a(1);
    }
    return sink == 12345 ? 1 : 0;
}
