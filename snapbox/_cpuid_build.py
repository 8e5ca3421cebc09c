"""cffi build script for snapbox._cpuid (run by setup.py at install time)."""

import pathlib

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void snapbox_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
    uint64_t snapbox_xgetbv0(void);
    """
)
ffibuilder.set_source(
    "snapbox._cpuid",
    (pathlib.Path(__file__).parent / "_cpuid.c").read_text(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
