"""The CPU feature set an image records, read from CPUID, and the check a host must pass.

On hosts without CPUID faulting the application executes CPUID natively and may pick code
paths (AVX2, AVX-512, ...) from what it sees, so an image may only be restored on a host
that offers at least the features, and the XSAVE state components, of the one that made it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass, field

from snapbox.state import IncompatibleHostError, savable

# Environment variable that replaces the detected host feature set (comma-separated names).
HOST_FEATURES_ENV = "SNAPBOX_HOST_CPU_FEATURES"

# XSAVE components enabled in XCR0 that a process gets only on request
# (arch_prctl ARCH_REQ_XCOMP_PERM): AMX tile data, 8 KB of it.
XFEATURE_TILE_DATA = 18
DYNAMIC_XFEATURES = 1 << XFEATURE_TILE_DATA
XFEATURE_MAX = 20  # Linux's count of XSAVE components it knows (6.x): higher numbers are EINVAL

# (leaf, subleaf, register) -> {bit: name}, names as Linux spells them in /proc/cpuinfo.
_BITS: dict[tuple[int, int, str], dict[int, str]] = {
    (0x1, 0, "edx"): {
        0: "fpu", 1: "vme", 2: "de", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 7: "mce",
        8: "cx8", 9: "apic", 11: "sep", 12: "mtrr", 13: "pge", 14: "mca", 15: "cmov",
        16: "pat", 17: "pse36", 18: "pn", 19: "clflush", 21: "dts", 22: "acpi", 23: "mmx",
        24: "fxsr", 25: "sse", 26: "sse2", 27: "ss", 28: "ht", 29: "tm", 30: "ia64", 31: "pbe",
    },
    (0x1, 0, "ecx"): {
        0: "pni", 1: "pclmulqdq", 2: "dtes64", 3: "monitor", 4: "ds_cpl", 5: "vmx", 6: "smx",
        7: "est", 8: "tm2", 9: "ssse3", 10: "cid", 11: "sdbg", 12: "fma", 13: "cx16",
        14: "xtpr", 15: "pdcm", 17: "pcid", 18: "dca", 19: "sse4_1", 20: "sse4_2",
        21: "x2apic", 22: "movbe", 23: "popcnt", 24: "tsc_deadline_timer", 25: "aes",
        26: "xsave", 28: "avx", 29: "f16c", 30: "rdrand", 31: "hypervisor",
    },
    (0x7, 0, "ebx"): {
        0: "fsgsbase", 1: "tsc_adjust", 2: "sgx", 3: "bmi1", 4: "hle", 5: "avx2", 7: "smep",
        8: "bmi2", 9: "erms", 10: "invpcid", 11: "rtm", 12: "cqm", 14: "mpx", 15: "rdt_a",
        16: "avx512f", 17: "avx512dq", 18: "rdseed", 19: "adx", 20: "smap", 21: "avx512ifma",
        23: "clflushopt", 24: "clwb", 25: "intel_pt", 26: "avx512pf", 27: "avx512er",
        28: "avx512cd", 29: "sha_ni", 30: "avx512bw", 31: "avx512vl",
    },
    (0x7, 0, "ecx"): {
        1: "avx512vbmi", 2: "umip", 3: "pku", 4: "ospke", 5: "waitpkg", 6: "avx512_vbmi2",
        8: "gfni", 9: "vaes", 10: "vpclmulqdq", 11: "avx512_vnni", 12: "avx512_bitalg",
        13: "tme", 14: "avx512_vpopcntdq", 16: "la57", 22: "rdpid", 24: "bus_lock_detect",
        25: "cldemote", 27: "movdiri", 28: "movdir64b", 29: "enqcmd", 30: "sgx_lc",
    },
    (0x7, 0, "edx"): {
        2: "avx512_4vnniw", 3: "avx512_4fmaps", 4: "fsrm", 8: "avx512_vp2intersect",
        10: "md_clear", 14: "serialize", 16: "tsxldtrk", 18: "pconfig", 19: "arch_lbr",
        20: "ibt", 22: "amx_bf16", 23: "avx512_fp16", 24: "amx_tile", 25: "amx_int8",
        28: "flush_l1d", 29: "arch_capabilities",
    },
    (0x7, 1, "eax"): {4: "avx_vnni", 5: "avx512_bf16"},
    (0xD, 1, "eax"): {0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves"},
    (0x80000001, 0, "edx"): {
        11: "syscall", 19: "mp", 20: "nx", 22: "mmxext", 25: "fxsr_opt", 26: "pdpe1gb",
        27: "rdtscp", 29: "lm", 30: "3dnowext", 31: "3dnow",
    },
    (0x80000001, 0, "ecx"): {
        0: "lahf_lm", 1: "cmp_legacy", 2: "svm", 3: "extapic", 4: "cr8_legacy", 5: "abm",
        6: "sse4a", 7: "misalignsse", 8: "3dnowprefetch", 9: "osvw", 10: "ibs", 11: "xop",
        12: "skinit", 13: "wdt", 15: "lwp", 16: "fma4", 17: "tce", 19: "nodeid_msr",
        21: "tbm", 22: "topoext", 23: "perfctr_core", 24: "perfctr_nb", 26: "bpext",
        27: "ptsc", 28: "perfctr_llc", 29: "mwaitx",
    },
}

# Features only the kernel or a hypervisor uses: an application cannot depend on them, so
# their absence on the restoring host does not matter.
SYSTEM_ONLY = frozenset(
    """vme de pse msr pae mce apic mtrr pge mca pat pse36 pn dts acpi ss ht tm ia64 pbe
    dtes64 monitor ds_cpl vmx smx est tm2 cid sdbg xtpr pdcm pcid dca x2apic
    tsc_deadline_timer hypervisor tsc_adjust sgx smep invpcid cqm mpx rdt_a smap intel_pt
    umip tme la57 bus_lock_detect sgx_lc md_clear pconfig arch_lbr ibt flush_l1d
    arch_capabilities xsaves svm extapic cr8_legacy osvw ibs skinit wdt nodeid_msr topoext
    perfctr_core perfctr_nb bpext ptsc perfctr_llc mwaitx mp""".split()
)

KNOWN_FEATURES = frozenset(n for table in _BITS.values() for n in table.values())

_REGS = ("eax", "ebx", "ecx", "edx")


def _cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    from snapbox._native import ffi, lib

    out = ffi.new("uint32_t[4]")
    lib.snapbox_cpuid(leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


# What /proc/cpuinfo says of a CPU beyond CPUID's vendor, family, model and flags.
CPUINFO_FIELDS = ("model name", "stepping", "microcode", "cpu MHz", "cache size", "fpu", "fpu_exception",
                  "cpuid level", "wp", "bugs", "bogomips", "TLB size", "clflush size", "cache_alignment",
                  "address sizes", "power management")


@savable
@dataclass(eq=False)
class FeatureSet:
    """The CPU a sandbox ran on: vendor, features by Linux name, and the XSAVE layout."""

    vendor: str = ""
    family: int = 0
    model: int = 0
    features: frozenset = field(default_factory=frozenset)  # names as in /proc/cpuinfo
    xcr0: int = 0  # XSAVE state components the OS enabled; FP state saved covers these
    xsave_size: int = 512  # bytes of XSAVE area for xcr0 (512: legacy FXSAVE only)
    # The host's description of its first CPU, field by field as its /proc/cpuinfo has them
    # (model name, stepping, cache size, address sizes...): the same in every image made here.
    info: dict = field(default_factory=dict)

    @classmethod
    def host(cls) -> FeatureSet:
        """The host's feature set; SNAPBOX_HOST_CPU_FEATURES replaces the detected names.
        CPUID is read once per process (in a VM each instruction exits to the hypervisor:
        every signal return, which needs the XSAVE size, paid ~180 µs for it)."""
        fs = dataclasses.replace(_detected())
        override = os.environ.get(HOST_FEATURES_ENV)
        if override is not None:
            fs.features = frozenset(n.strip() for n in override.split(",") if n.strip())
        return fs

    @classmethod
    def detect(cls) -> FeatureSet:
        max_leaf, b, c, d = _cpuid(0)
        vendor = b"".join(r.to_bytes(4, "little") for r in (b, d, c)).decode("ascii", "replace")
        max_ext = _cpuid(0x80000000)[0]
        names = set()
        for (leaf, sub, reg), bits in _BITS.items():
            if (leaf < 0x80000000 and leaf > max_leaf) or (leaf >= 0x80000000 and leaf > max_ext):
                continue
            value = _cpuid(leaf, sub)[_REGS.index(reg)]
            names.update(name for bit, name in bits.items() if value >> bit & 1)
        eax1, _, ecx1, _ = _cpuid(1)
        family = (eax1 >> 8) & 0xF
        model = (eax1 >> 4) & 0xF
        if family in (6, 15):
            model |= ((eax1 >> 16) & 0xF) << 4
        if family == 15:
            family += (eax1 >> 20) & 0xFF
        xcr0 = 0
        xsave_size = 512
        if ecx1 >> 27 & 1:  # OSXSAVE: XGETBV is usable
            from snapbox._native import lib

            xcr0 = lib.snapbox_xgetbv0()
            xsave_size = _cpuid(0xD, 0)[1]
        return cls(vendor=vendor, family=family, model=model, features=frozenset(names),
                   xcr0=xcr0, xsave_size=xsave_size, info=_host_cpuinfo())

    def hwcap(self) -> int:
        """AT_HWCAP for x86-64: CPUID.1:EDX, as Linux reports it."""
        return _hwcap()

    def missing_on(self, host: FeatureSet) -> list[str]:
        """Application-visible features of this set that `host` lacks, sorted."""
        return sorted((self.features - host.features) - SYSTEM_ONLY)

    def check_host(self, host: FeatureSet) -> None:
        """Refuse a host that cannot run what ran on this feature set."""
        missing = self.missing_on(host)
        if missing:
            raise IncompatibleHostError(
                "image needs CPU features this host lacks: " + ", ".join(missing)
            )
        lacking_state = self.xcr0 & ~host.xcr0
        if lacking_state:
            raise IncompatibleHostError(
                f"image needs XSAVE state components this host lacks (xcr0 bits {lacking_state:#x})"
            )


@functools.cache
def _host_cpuinfo() -> dict:
    """The fields of the host's /proc/cpuinfo for its first CPU that describe the CPU
    itself (not its place among the others, not its features: those are the sandbox's)."""
    info = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # none: the fields are left out
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            if key.strip() in CPUINFO_FIELDS:
                info[key.strip()] = value.strip()
    return info


def _detected() -> FeatureSet:
    return FeatureSet.detect()


@functools.cache
def _hwcap() -> int:
    return _cpuid(1)[3]


@functools.cache
def xstate_size(mask: int) -> int:
    """Bytes of a standard-format XSAVE area holding the components in `mask` (each at
    the offset CPUID leaf 0xD gives it): the legacy area and the header, then up to the
    end of the highest component."""
    size = 576
    for i in range(2, 64):
        if mask >> i & 1:
            length, offset = _cpuid(0xD, i)[:2]
            size = max(size, offset + length)
    return size
