/* A target whose process name and thread names are hostile to terminals: rich markup and an OSC
 * escape sequence (prctl(PR_SET_NAME) allows 15 bytes). Two threads grow and shrink the heap, so the
 * tracer records sysmalloc events for them; runs for argv[1] seconds (default 30) and exits 0. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

static const char *const NAMES[] = {"[b]\x1b]0;pwn\x07[/b]", "[red]x\x1b[2J[/]"};
static double seconds = 30;

static double now(void) {
    struct timespec value;
    clock_gettime(CLOCK_MONOTONIC, &value);
    return value.tv_sec + value.tv_nsec / 1e9;
}

static void *churn(void *name) {
    prctl(PR_SET_NAME, name);
    double end = now() + seconds;
    enum { BLOCKS = 4096 };
    static __thread void *blocks[BLOCKS];
    while (now() < end) {
        for (int index = 0; index < BLOCKS; index++) {
            blocks[index] = malloc(200 + (size_t)index % 700);
            memset(blocks[index], index, 16);
        }
        for (int index = 0; index < BLOCKS; index++) free(blocks[index]);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seconds = atof(argv[1]);
    prctl(PR_SET_NAME, NAMES[0]);
    pthread_t threads[2];
    for (int index = 0; index < 2; index++) pthread_create(&threads[index], NULL, churn, (void *)NAMES[index]);
    for (int index = 0; index < 2; index++) pthread_join(threads[index], NULL);
    return 0;
}
