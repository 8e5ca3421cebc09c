/* Random system calls with hostile arguments, for the escape fuzzer (bench/escape) and its
 * bounded run in the tests. Never run it on a host: it is meant to try everything.
 *
 *   scramble SEED ROUNDS CALLS
 *
 * Each round is a child process (its own seed) making CALLS random calls, with an alarm in
 * case one blocks; the parent kills what a round leaves behind and prints "round N" after
 * each, then "scrambled". Arguments are drawn from what breaks kernels: 0, -1, small fds and
 * sizes, huge values, flag soups, addresses in and around a scratch mapping, pointers to
 * random bytes, to paths (with "..", symlinks, "/proc/self/..." and names not UTF-8) and to
 * structures of random content. A path the program creates carries "escape-probe" in its
 * name, so the host can be searched for it afterwards. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t state;

static uint64_t next(void) {  /* splitmix64 */
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static const char *paths[] = {
    "/", ".", "..", "/..", "/../../../../etc/passwd", "/proc/self/root/..", "/proc/1/cwd/../..",
    "/proc/self/fd/0", "/proc/self/exe", "/proc/self/mem", "/dev/null", "/dev/zero", "/dev/full",
    "/tmp/escape-probe", "/tmp/escape-probe/../escape-probe-2", "/rw/escape-probe", "/rw/../escape-probe",
    "escape-probe-rel", "/escape-probe-root", "/tmp/\xff\xfe-escape-probe", "/tmp/l-escape-probe",
    "/sys/kernel", "/etc/shadow", "", "//////", "/tmp/./././escape-probe",
};

static char *scratch;  /* 64 KiB, random bytes and some paths */
#define SCRATCH (64 << 10)

static uint64_t arg(void) {
    switch (next() % 16) {
    case 0: return 0;
    case 1: return (uint64_t)-1;
    case 2: return next() % 8;  /* an fd, a small size */
    case 3: return next() % 4096;
    case 4: return next();
    case 5: return 1ULL << (next() % 64);
    case 6: return (uint64_t)(scratch + next() % SCRATCH);
    case 7: return (uint64_t)scratch + (next() % 16) * 4096;
    case 8: return (uint64_t)paths[next() % (sizeof paths / sizeof *paths)];
    case 9: return (uint64_t)scratch - 4096 + next() % 8192;  /* across the edges */
    case 10: return 0xffffffffff600000ULL + (next() % 3) * 0x400;
    case 11: return 0x7fffffff0000ULL + next() % 0x100000;  /* near the stub's page */
    case 12: return next() & 0xffffffffULL;
    case 13: return (uint64_t)(int64_t)(int32_t)next();
    case 14: return next() % 65536;
    default: return next() % 1024;
    }
}

static long pick_nr(void) {
    for (;;) {
        long nr = next() % 16 == 0 ? 424 + next() % 40 : next() % 336;
        switch (nr) {
        case SYS_exit: case SYS_exit_group: case SYS_rt_sigreturn: case SYS_execve: case SYS_execveat:
        case SYS_vfork: case SYS_reboot:
            continue;  /* they end this round before it tried anything */
        default:
            return nr;
        }
    }
}

static void round_child(uint64_t seed, int calls) {
    state = seed;
    alarm(2);
    for (int i = 0; i < calls; i++) {
        if (i % 64 == 0)  /* fresh random contents */
            for (int j = 0; j < SCRATCH; j += 8)
                *(uint64_t *)(scratch + j) = next();
        long nr = pick_nr();
        uint64_t a[6];
        for (int j = 0; j < 6; j++)
            a[j] = arg();
        if (nr == SYS_munmap || nr == SYS_mremap || nr == SYS_mprotect || nr == SYS_madvise || nr == SYS_brk)
            a[0] = (uint64_t)scratch + (next() % 16) * 4096;  /* its own memory, not its code */
        syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    }
    _exit(0);
}

int main(int argc, char **argv) {
    uint64_t seed = argc > 1 ? strtoull(argv[1], 0, 0) : 1;
    int rounds = argc > 2 ? atoi(argv[2]) : 10;
    int calls = argc > 3 ? atoi(argv[3]) : 200;
    scratch = mmap(0, SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < rounds; r++) {
        pid_t pid = fork();
        if (pid == 0)
            round_child(seed * 1000003 + r, calls);
        struct timespec pause = {0, 20 * 1000 * 1000};
        int waited = 0, status;
        while (pid > 0 && waitpid(pid, &status, WNOHANG) == 0 && waited++ < 200)
            nanosleep(&pause, 0);
        kill(-1, SIGKILL);  /* the round and whatever it forked (init itself is spared) */
        while (waitpid(-1, &status, WNOHANG) > 0 || (pid > 0 && waitpid(pid, &status, 0) > 0))
            ;
        printf("round %d\n", r);
        fflush(stdout);
    }
    printf("scrambled\n");
    return 0;
}
