/* Helpers for the attack programs: each check prints "ok NAME" or "not ok NAME: why", and
 * the program exits 1 if any check failed. A check states what Linux does (man pages):
 * the attack programs pass natively, as non-root, and must pass in a sandbox. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(name, cond, ...)                                                         \
    do {                                                                               \
        if (cond) {                                                                    \
            printf("ok %s\n", name);                                                   \
        } else {                                                                       \
            failures++;                                                                \
            printf("not ok %s: ", name);                                               \
            printf(__VA_ARGS__);                                                       \
            printf(" (errno %d %s)\n", errno, strerror(errno));                        \
        }                                                                              \
        fflush(stdout);                                                                \
    } while (0)

#define DONE() (printf("done, %d failed\n", failures), fflush(stdout), failures ? 1 : 0)
