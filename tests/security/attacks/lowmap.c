/* Mappings below mmap_min_addr (a NULL page for kernel exploits): Linux refuses every way
 * of making one with EPERM for a process without CAP_SYS_RAWIO. The limit is the
 * sysctl's where /proc/sys shows it, else Linux's usual 64 KiB. */
#include "attack.h"
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static uintptr_t min_addr(void) {
    FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
    unsigned long v = 65536;
    if (f) {
        if (fscanf(f, "%lu", &v) != 1)
            v = 65536;
        fclose(f);
    }
    return v;
}

int main(void) {
    uintptr_t low = min_addr() - 4096;
    void *p = mmap((void *)0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK("mmap-fixed-0", p == MAP_FAILED && errno == EPERM, "mmap(0, MAP_FIXED) gave %p", p);
    if (low) {  /* a host whose limit is one page has only page 0 below it */
        p = mmap((void *)low, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        CHECK("mmap-noreplace-low", p == MAP_FAILED && errno == EPERM, "mmap(%#lx, MAP_FIXED_NOREPLACE) gave %p",
              low, p);
    }
    p = mmap((void *)low, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK("mmap-hint-low", p != MAP_FAILED && (uintptr_t)p > low, "a low hint gave %p", p);

    char *src = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(src, "still here");
    void *q = mremap(src, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)0);
    CHECK("mremap-fixed-0", q == MAP_FAILED && errno == EPERM, "mremap to 0 gave %p", q);
    CHECK("mremap-fixed-0-source-kept", strcmp(src, "still here") == 0, "the source changed");
    if (low) {
        q = mremap(src, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)low);
        CHECK("mremap-fixed-low", q == MAP_FAILED && errno == EPERM, "mremap to %#lx gave %p", low, q);
    }

    void *brk0 = sbrk(0);
    CHECK("brk-low", brk((void *)0x1000) != 0 && sbrk(0) == brk0, "brk(0x1000) moved the break");

    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int below = 0;
    while (maps && fgets(line, sizeof line, maps))
        if (strtoull(line, 0, 16) <= low)
            below++;
    if (maps)
        CHECK("maps-nothing-low", below == 0, "%d mappings below mmap_min_addr", below);
    return DONE();
}
