"""The ELF loader: maps a static executable (non-PIE or static-PIE) and builds its stack."""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.filepages import FilePages
from snapbox.kernel.mm import STACK_SIZE, STACK_TOP, MemoryManager
from snapbox.memfile import PAGE_SIZE, page_align, page_round_down
from snapbox.platform.stub import PROT_EXEC, PROT_READ, PROT_WRITE

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_INTERP, PT_PHDR = 1, 3, 6
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PF_X, PF_W, PF_R = 1, 2, 4
# Where a PIE program is placed (Linux's ELF_ET_DYN_BASE without randomisation), and its
# program interpreter (the dynamic loader), which Linux puts where mmap would.
PIE_BASE = 0x555555554000
INTERP_BASE = 0x7FFFF7FC0000 - (64 << 20)

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_SYSINFO_EHDR, AT_MINSIGSTKSZ = 23, 25, 26, 31, 33, 51


def _host_auxv(key: int, default: int) -> int:
    """An entry of this process's own auxiliary vector, as the host kernel gave it."""
    with open("/proc/self/auxv", "rb") as f:
        auxv = f.read()
    for k, v in struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]):
        if k == key:
            return v
    return default


# AT_MINSIGSTKSZ: the host kernel's figure (its largest signal frame, AMX tiles included;
# 2048, the old constant, from a kernel too old to give one).
MINSIGSTKSZ = _host_auxv(AT_MINSIGSTKSZ, 2048)


@dataclass
class LoadedImage:
    entry: int
    phdr: int
    phnum: int
    phent: int
    end: int  # page-aligned end of the highest segment: where brk starts
    interp: str = ""  # PT_INTERP: the dynamic loader to run first ("" for a static program)
    base: int = 0  # where the image was placed (AT_BASE, for an interpreter)


def _prot(flags: int) -> int:
    return (PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0) | \
        (PROT_EXEC if flags & PF_X else 0)


def load(mm: MemoryManager, data: bytes, path: str, base: int | None = None,
         pages: FilePages | None = None) -> LoadedImage:
    """Map the PT_LOAD segments of `data` into `mm` (a position-independent one at `base`,
    default PIE_BASE). With `pages` (the file's cached pages), a read-only segment maps them
    instead of a copy, but for a page it shares with another segment. Raises ENOEXEC for
    what it cannot run."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise SyscallError(errno.ENOEXEC, "not an ELF file")
    ident, etype, machine, _, entry, phoff, _, _, _, phent, phnum, _, _, _ = _EHDR.unpack(data[:_EHDR.size])
    if ident[4] != 2 or ident[5] != 1 or machine != EM_X86_64 or etype not in (ET_EXEC, ET_DYN):
        raise SyscallError(errno.ENOEXEC, "not an x86-64 executable")
    if phent != _PHDR.size or phnum == 0 or phoff + phnum * phent > len(data):
        raise SyscallError(errno.ENOEXEC, "bad program headers")
    phdrs = [_PHDR.unpack(data[phoff + i * phent : phoff + (i + 1) * phent]) for i in range(phnum)]
    interp = ""
    for ptype, _, offset, _, _, filesz, _, _ in phdrs:
        if ptype == PT_INTERP:
            if offset + filesz > len(data) or filesz < 2:
                raise SyscallError(errno.ENOEXEC, "bad PT_INTERP")
            interp = data[offset : offset + filesz].rstrip(b"\0").decode("utf-8", "replace")
    base = (PIE_BASE if base is None else base) if etype == ET_DYN else 0
    loads = [p for p in phdrs if p[0] == PT_LOAD]
    if not loads:
        raise SyscallError(errno.ENOEXEC, "no loadable segments")
    mapped_end = 0
    for i, (_, flags, offset, vaddr, _, filesz, memsz, _) in enumerate(loads):
        if filesz > memsz or offset + filesz > len(data):
            raise SyscallError(errno.ENOEXEC, "a segment lies outside the file")
        if (base + vaddr - offset) % PAGE_SIZE:
            raise SyscallError(errno.ENOEXEC, "a segment's address and offset disagree")
        start = page_round_down(base + vaddr)
        end = page_align(base + vaddr + memsz)
        # Two segments may share a boundary page: map only what is not mapped yet.
        start = max(start, mapped_end)
        file_start = offset + (start - (base + vaddr))
        shared_end = end
        if i + 1 < len(loads):
            shared_end = min(end, page_round_down(base + loads[i + 1][3]))
        if pages is not None and not flags & PF_W and filesz == memsz and shared_end > start:
            mm.map_file(start, shared_end - start, _prot(flags), True, pages, file_start, path)
            if end > shared_end:
                mm.map_anonymous(shared_end, end - shared_end, _prot(flags), fixed=True, kind=path)
                mm.vmas[mm.starts.index(shared_end)].file_offset = file_start + (shared_end - start)
            copy_from = max(base + vaddr, shared_end)
        else:
            if end > start:
                mm.map_anonymous(start, end - start, _prot(flags), fixed=True, kind=path)
                mm.vmas[mm.starts.index(start)].file_offset = page_round_down(offset)
            copy_from = base + vaddr
        skip = copy_from - (base + vaddr)
        if skip < filesz:
            mm.poke(copy_from, data[offset + skip : offset + filesz])
        mapped_end = max(mapped_end, end)
    phdr_addr = 0
    for ptype, _, offset, vaddr, _, filesz, _, _ in phdrs:
        if ptype == PT_PHDR:
            phdr_addr = base + vaddr
    if not phdr_addr:
        for _, _, offset, vaddr, _, filesz, _, _ in loads:
            if offset <= phoff < offset + filesz:
                phdr_addr = base + vaddr + (phoff - offset)
    return LoadedImage(entry=base + entry, phdr=phdr_addr, phnum=phnum, phent=phent, end=mapped_end,
                       interp=interp, base=base)


def build_stack(mm: MemoryManager, image: LoadedImage, argv: list[bytes], envp: list[bytes],
                execfn: bytes, hwcap: int, interp_base: int = 0, ids: tuple = (0, 0, 0, 0, 0), vdso: int = 0) -> int:
    """Map the main stack and lay out argc, argv, envp and auxv; returns the initial rsp.
    `ids`: the program's (uid, euid, gid, egid, secure), for AT_UID... and AT_SECURE;
    `vdso`: where the vDSO is mapped (AT_SYSINFO_EHDR), if anywhere."""
    mm.map_anonymous(STACK_TOP - STACK_SIZE, STACK_SIZE, PROT_READ | PROT_WRITE, fixed=True, kind="stack")
    sp = STACK_TOP

    def push(blob: bytes) -> int:
        nonlocal sp
        sp -= len(blob)
        mm.write(sp, blob)
        return sp

    execfn_addr = push(execfn + b"\0")
    env_addrs = [push(e + b"\0") for e in reversed(envp)][::-1]
    arg_addrs = [push(a + b"\0") for a in reversed(argv)][::-1]
    platform = push(b"x86_64\0")
    sp &= ~15
    random = push(os.urandom(16))
    auxv = [
        (AT_PHDR, image.phdr), (AT_PHENT, image.phent), (AT_PHNUM, image.phnum),
        (AT_PAGESZ, PAGE_SIZE), (AT_BASE, interp_base), (AT_FLAGS, 0), (AT_ENTRY, image.entry),
        (AT_UID, ids[0]), (AT_EUID, ids[1]), (AT_GID, ids[2]), (AT_EGID, ids[3]), (AT_SECURE, ids[4]),
        (AT_RANDOM, random), (AT_HWCAP, hwcap), (AT_HWCAP2, 0), (AT_CLKTCK, 100),
        (AT_PLATFORM, platform), (AT_EXECFN, execfn_addr), (AT_MINSIGSTKSZ, MINSIGSTKSZ),
        *([(AT_SYSINFO_EHDR, vdso)] if vdso else []), (AT_NULL, 0),
    ]
    mm.env_area = (env_addrs[0] if envp else execfn_addr, execfn_addr)
    mm.auxv = b"".join(struct.pack("<QQ", key, value) for key, value in auxv)
    words = [len(argv), *arg_addrs, 0, *env_addrs, 0]
    for key, value in auxv:
        words += [key, value]
    sp = (sp - len(words) * 8) & ~15
    mm.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp
