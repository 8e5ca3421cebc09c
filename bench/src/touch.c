/* touch MB [reread]: fills MB megabytes, each page half pseudo-random and half zeros (so
 * that it compresses to about half, like real heaps), prints "ready", then a tick every
 * 10 ms: the first tick after a restore marks the program running again. With "reread",
 * every tick first reads all of the memory back (a word of each page): the first tick after
 * a restore then also needs every page. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    long mb = argc > 1 ? atol(argv[1]) : 0;
    size_t len = (size_t)mb << 20;
    uint64_t *p = NULL;
    if (len) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
        uint64_t x = 88172645463325252ULL;
        for (size_t page = 0; page < len / 4096; page++)
            for (size_t w = 0; w < 256; w++) { /* the first half of the page's 512 words */
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                p[page * 512 + w] = x;
            }
    }
    int reread = argc > 2 && strcmp(argv[2], "reread") == 0;
    volatile uint64_t *v = p;
    printf("ready\n");
    fflush(stdout);
    for (long t = 0;; t++) {
        uint64_t sum = 0;
        if (reread)
            for (size_t page = 0; page < len / 4096; page++) sum += v[page * 512];
        printf("tick %ld %llx\n", t, (unsigned long long)sum);
        fflush(stdout);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}
