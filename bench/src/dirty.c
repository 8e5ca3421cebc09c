/* dirty MB PAGES: fills MB megabytes, then every 10 ms writes PAGES random pages (of
 * pseudo-random bytes) and checks every written page still holds what it wrote. Prints
 * "ready" once filled, then once a second "gap MS" (the longest wall-clock gap between two
 * of its 10 ms steps in that second: how long it was frozen) and, on a wrong page,
 * "CORRUPT" (and exits 1). Wall clock, not monotonic: a sandbox's monotonic clock does not
 * count the time it spent frozen. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096

static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    size_t pages = (size_t)(argc > 1 ? atol(argv[1]) : 512) * 1024 * 1024 / PAGE;
    long per_step = argc > 2 ? atol(argv[2]) : 100;
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *stamp = calloc(pages, sizeof *stamp); /* what each page's first word must be */
    if (mem == MAP_FAILED || !stamp) return 1;
    for (size_t p = 0; p < pages; p++) {
        for (size_t w = 0; w < PAGE / 8; w++) mem[p * PAGE / 8 + w] = next();
        stamp[p] = mem[p * PAGE / 8];
    }
    printf("ready\n");
    fflush(stdout);
    double last = wall(), second = last, worst = 0;
    for (;;) {
        for (long i = 0; i < per_step; i++) {
            size_t p = next() % pages;
            if (mem[p * PAGE / 8] != stamp[p]) {
                printf("CORRUPT page %zu\n", p);
                fflush(stdout);
                return 1;
            }
            for (size_t w = 0; w < PAGE / 8; w += 8) mem[p * PAGE / 8 + w] = next();
            stamp[p] = mem[p * PAGE / 8];
        }
        struct timespec ten = {0, 10 * 1000 * 1000};
        nanosleep(&ten, NULL);
        double now = wall();
        if (now - last > worst) worst = now - last;
        last = now;
        if (now - second >= 1.0) {
            printf("gap %.1f\n", worst * 1000);
            fflush(stdout);
            worst = 0;
            second = now;
        }
    }
}
