/* spawn N PROGRAM [posix_spawn]: N times fork (or posix_spawn, whose child shares the
 * parent's memory until it execs: clone(CLONE_VM|CLONE_VFORK)), exec PROGRAM in the
 * child, wait; prints mean µs per round. */
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100;
    char *prog = argc > 2 ? argv[2] : "/nop";
    int by_spawn = argc > 3 && !strcmp(argv[3], "posix_spawn");
    char *args[] = {prog, NULL};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pid_t pid;
        if (by_spawn) {
            if (posix_spawn(&pid, prog, NULL, NULL, args, NULL) != 0) { fprintf(stderr, "posix_spawn failed\n"); return 1; }
        } else if ((pid = fork()) == 0) {
            execl(prog, prog, (char *)NULL);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "child failed\n"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1000.0);
    return 0;
}
