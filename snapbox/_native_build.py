"""cffi build script for snapbox._native (run by setup.py at install time)."""

import pathlib

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void snapbox_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
    uint64_t snapbox_xgetbv0(void);
    uint32_t snapbox_cmpxchg32(uint32_t *word, uint32_t expected, uint32_t desired);
    """
)
ffibuilder.set_source(
    "snapbox._native",
    (pathlib.Path(__file__).parent / "_native.c").read_text(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
