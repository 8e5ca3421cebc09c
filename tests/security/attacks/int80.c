/* int 0x80 from 64-bit code is the i386 ABI: eax 20 is i386 getpid (64-bit writev) and 4 is
 * i386 write (64-bit stat). A kernel with IA32 emulation answers the i386 call; one without
 * faults with SIGSEGV. Never may the 64-bit call of the same number run. */
#include "attack.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

static sigjmp_buf env;
static int code;

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    code = info->si_code;
    siglongjmp(env, 1);
}

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c), "D"(a), "S"(b) : "memory");
    return ret;
}

int main(void) {
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
    sigaction(SIGSEGV, &sa, 0);
    static char leak[] = "LEAKED: a 64-bit syscall ran\n";
    struct iovec iov = {leak, sizeof leak - 1};
    /* rdi=1 (stdout), rsi=&iov, rdx=1: what 64-bit writev would use. */
    volatile long r = 0;
    if (sigsetjmp(env, 1) == 0) {
        r = int80(20, 1, (long)&iov, 1);
        CHECK("int80-getpid", r == getpid(), "i386 getpid gave %ld", r);
    } else {
        CHECK("int80-getpid-faults", code == 0x80, "SIGSEGV with si_code %d", code);
    }
    if (sigsetjmp(env, 1) == 0) {
        static char msg[] = "i386 write ran\n";
        r = int80(4, 1, (long)msg, sizeof msg - 1);
        CHECK("int80-write", r == sizeof msg - 1, "i386 write gave %ld", r);
    } else {
        CHECK("int80-write-faults", code == 0x80, "SIGSEGV with si_code %d", code);
    }
    return DONE();
}
