/* A static program with no allocator at all (no libc): it only sleeps, through raw syscalls, for
 * about a minute. arena-trace must refuse it with "no supported allocator", not crash on it. */
typedef struct { long seconds, nanoseconds; } sleep_time;

static long raw_syscall(long number, long first, long second) {
    long result;
    __asm__ volatile("syscall" : "=a"(result) : "a"(number), "D"(first), "S"(second) : "rcx", "r11", "memory");
    return result;
}

void _start(void) {
    sleep_time interval = {1, 0};
    for (int second = 0; second < 60; second++) raw_syscall(35 /* nanosleep */, (long)&interval, 0);
    raw_syscall(60 /* exit */, 0, 0);
}
