/* touch MB: fills MB megabytes, each page half pseudo-random and half zeros (so that it
 * compresses to about half, like real heaps), prints "ready", then a tick every 10 ms: the
 * first tick after a restore marks the program running again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    long mb = argc > 1 ? atol(argv[1]) : 0;
    size_t len = (size_t)mb << 20;
    if (len) {
        uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
        uint64_t x = 88172645463325252ULL;
        for (size_t page = 0; page < len / 4096; page++)
            for (size_t w = 0; w < 256; w++) { /* the first half of the page's 512 words */
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                p[page * 512 + w] = x;
            }
    }
    printf("ready\n");
    fflush(stdout);
    for (long t = 0;; t++) {
        printf("tick %ld\n", t);
        fflush(stdout);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}
