/* The few machine instructions the sentry needs and Python lacks: CPUID and XCR0, for the
 * CPU feature set that images record, and an atomic compare-and-exchange on memory the
 * sandbox's threads update at the same time (futex words). */
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

/* Store `desired` in *word if it holds `expected`; return what it held (`expected`: stored). */
uint32_t snapbox_cmpxchg32(uint32_t *word, uint32_t expected, uint32_t desired)
{
    __atomic_compare_exchange_n(word, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
