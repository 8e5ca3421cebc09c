/* A failing mremap must have no side effect: the source stays mapped with its data, and
 * nothing is allocated (a loop of them must not grow the sandbox's memory).
 *
 *   remapleak [ROUNDS [hold]]     with "hold", it waits at the end for its memory to be seen */
#include "attack.h"
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE (1 << 20)

static int intact(const char *p) {
    for (int i = 0; i < SIZE; i += 4096)
        if (p[i] != (char)(i >> 12))
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 300;
    /* What each bad target must give, as Linux checks it. */
    struct { const char *name; uintptr_t to; int err; } bad[] = {
        {"unaligned", 0x7f0000001234, EINVAL},
        {"past-user-space", 0xfffffffffff00000ULL, EINVAL},
        {"below-min-addr", 0x1000, EPERM},
    };
    int ok[4] = {1, 1, 1, 1};
    for (int r = 0; r < rounds; r++) {
        char *p = mmap(0, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        for (int i = 0; i < SIZE; i += 4096)
            p[i] = (char)(i >> 12);
        for (int b = 0; b < 3; b++) {
            void *q = mremap(p, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)bad[b].to);
            if (q != MAP_FAILED || errno != bad[b].err || !intact(p))
                ok[b] = 0;
        }
        /* A target overlapping the source itself. */
        void *q = mremap(p, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, p + 4096);
        if (q != MAP_FAILED || errno != EINVAL || !intact(p))
            ok[3] = 0;
        munmap(p, SIZE);
    }
    for (int b = 0; b < 3; b++)
        CHECK(bad[b].name, ok[b], "mremap to a bad target had an effect or the wrong error");
    CHECK("overlapping", ok[3], "mremap onto its own source had an effect or the wrong error");
    char *p = mmap(0, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < SIZE; i += 4096)
        p[i] = (char)(i >> 12);
    char *q = mremap(p, SIZE, 2 * SIZE, MREMAP_MAYMOVE, 0);
    CHECK("a-good-move-still-works", q != MAP_FAILED && intact(q), "mremap to grow gave %p", q);
    char *d = mremap(q, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0);
    CHECK("dontunmap", d != MAP_FAILED && intact(d) && q[4096] == 0, "MREMAP_DONTUNMAP gave %p", d);
    printf("settled\n");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "hold") == 0)
        pause();
    return DONE();
}
