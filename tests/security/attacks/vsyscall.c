/* The legacy vsyscall page: its entry points are emulated by the kernel with no syscall
 * instruction. They must give the sandbox's time, like the syscalls of the same name. */
#include "attack.h"
#include <sys/time.h>
#include <time.h>

typedef long (*gtod_fn)(struct timeval *, void *);
typedef long (*time_fn)(long *);

int main(void) {
    gtod_fn vgettimeofday = (gtod_fn)0xffffffffff600000UL;
    time_fn vtime = (time_fn)0xffffffffff600400UL;
    struct timeval tv = {0}, ref;
    long r = vgettimeofday(&tv, 0);
    gettimeofday(&ref, 0);
    long diff = ref.tv_sec - tv.tv_sec;
    CHECK("vsyscall-gettimeofday", r == 0 && diff >= 0 && diff <= 2, "returned %ld, %ld s off", r, diff);
    long t2 = 0, t1 = vtime(&t2);
    diff = time(0) - t1;
    CHECK("vsyscall-time", t1 == t2 && diff >= 0 && diff <= 2, "returned %ld, %ld s off", t1, diff);
    return DONE();
}
