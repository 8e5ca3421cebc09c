/* touch MB [reread]: fills MB megabytes, each page half pseudo-random and half zeros (so
 * that it compresses to about half, like real heaps), prints "ready", then a tick every
 * 10 ms: the first tick after a restore marks the program running again. With "reread",
 * it answers each line of stdin instead: it reads all of its memory back (a word of each
 * page) and prints the sum, so its first answer after a restore needs every page. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

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
    printf("ready\n");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "reread") == 0) {
        volatile uint64_t *v = p;
        char c;
        while (read(0, &c, 1) == 1) {
            if (c != '\n') continue;
            uint64_t sum = 0;
            for (size_t page = 0; page < len / 4096; page++) sum += v[page * 512];
            printf("sum %llx\n", (unsigned long long)sum);
            fflush(stdout);
        }
        return 0;
    }
    for (long t = 0;; t++) {
        printf("tick %ld\n", t);
        fflush(stdout);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}
