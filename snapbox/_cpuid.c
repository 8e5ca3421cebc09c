/* The CPUID instruction and XCR0, for the CPU feature set that images record. */
#include <stdint.h>
#include <cpuid.h>

void snapbox_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

/* XGETBV with ECX=0; only valid when CPUID.1:ECX.OSXSAVE is set. */
uint64_t snapbox_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
