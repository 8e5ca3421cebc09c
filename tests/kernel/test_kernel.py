"""The kernel in-process: static programs run to completion, and a kernel saved to an image
comes back in a fresh set of stubs and carries on."""

from __future__ import annotations

import io
import logging
import os

import pytest

from snapbox.kernel.checkpoint import LoadContext
from snapbox.kernel.kernel import Kernel
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.syscalls.stats import pack_stat


def boot(images, bundle: str, *args: str) -> Kernel:
    rootfs = str(images / bundle / "rootfs")
    return Kernel.boot(rootfs, [f"/{bundle}".encode(), *(a.encode() for a in args)], [b"PATH=/"])


@pytest.mark.parametrize("bundle", ["hello", "hello-glibc"])
def test_static_program_runs_to_its_exit_code(images, capfd, bundle):
    k = boot(images, bundle, "7")
    k.start()
    k.run()
    assert k.exit_status == 7 << 8
    assert capfd.readouterr().out == "hello, world\n"


def test_unimplemented_syscall_is_enosys_and_logged(images, capfd, caplog):
    caplog.set_level(logging.WARNING)
    k = boot(images, "hello-glibc")
    k.start()
    k.run()
    assert k.exit_status == 0  # glibc copes with ENOSYS from rseq, as on an old Linux
    assert "unimplemented syscall rseq (334): ENOSYS" in caplog.text


def test_missing_executable_is_a_clear_error(images):
    from snapbox.state import SnapboxError

    with pytest.raises(SnapboxError, match="executable /nope not found"):
        Kernel.boot(str(images / "hello" / "rootfs"), [b"/nope"], [])


def read_lines(capfd, sink: list[str]) -> list[str]:
    sink.extend(capfd.readouterr().out.splitlines())
    return sink


def test_save_and_load_carry_on_in_new_stubs(images, capfd):
    k = boot(images, "counter", "20")
    k.start()
    out: list[str] = []
    while len(read_lines(capfd, out)) < 5:
        k.step(0.05)
    k.pause()
    image = io.BytesIO()
    k.save(image)
    old_stub = k.tasks.init.mm.stub.pid
    k.shutdown()
    last = int(read_lines(capfd, out)[-1].split()[0].split("=")[1])
    image.seek(0)
    k2 = Kernel.load(image, LoadContext(rootfs=str(images / "counter" / "rootfs")))
    assert k2.tasks.init.mm.stub.pid != old_stub
    k2.start()
    after: list[str] = []
    while len(read_lines(capfd, after)) < 3:
        k2.step(0.05)
    k2.shutdown()
    first = dict(kv.split("=") for kv in after[0].split())
    assert int(first["count"]) == last + 1
    assert first["file"] == first["count"]
    assert int(first["offset"]) == 9 * int(first["count"])


def test_stat_layout_matches_the_host(tmp_path):
    # struct stat as the kernel packs it must be what glibc's os.stat sees for a host file.
    p = tmp_path / "f"
    p.write_bytes(b"12345")
    s = os.stat(p)
    packed = pack_stat(dict(dev=s.st_dev, ino=s.st_ino, mode=s.st_mode, nlink=s.st_nlink,
                            uid=s.st_uid, gid=s.st_gid, rdev=s.st_rdev, size=s.st_size,
                            blksize=s.st_blksize, blocks=s.st_blocks, atime=s.st_atime_ns,
                            mtime=s.st_mtime_ns, ctime=s.st_ctime_ns))
    assert len(packed) == 144
    assert int.from_bytes(packed[48:56], "little") == 5


def test_address_space_unmap_splits_and_releases(images):
    from snapbox.memfile import MemoryFile

    mf = MemoryFile()
    mm = MemoryManager(memfile=mf)
    addr = mm.map_anonymous(0, 10 * 4096, 3, fixed=False)
    mm.write(addr + 4096 * 5, b"middle")
    mm.unmap(addr + 4096 * 2, 4096 * 2)
    assert [(v.start - addr, v.end - addr) for v in mm.vmas] == [(0, 8192), (16384, 40960)]
    assert mm.read(addr + 4096 * 5, 6) == b"middle"
    assert mf.allocated == 8 * 4096
    from snapbox.kernel.errors import SyscallError

    with pytest.raises(SyscallError):
        mm.read(addr + 4096 * 2, 1)
    mf.close()


def test_memory_limit_charges_usable_memory_not_reservations():
    from snapbox.kernel.errors import SyscallError
    from snapbox.memfile import MemoryFile

    mf = MemoryFile(limit=1 << 20)
    mm = MemoryManager(memfile=mf)
    reserve = mm.map_anonymous(0, 64 << 20, 0, fixed=False)  # PROT_NONE: a reservation
    assert mf.charged == 0
    mm.protect(reserve, 768 << 10, 3)  # made usable: charged now
    assert mf.charged == 768 << 10
    with pytest.raises(SyscallError) as e:
        mm.protect(reserve + (768 << 10), 1 << 20, 3)
    assert e.value.errno == 12  # ENOMEM
    with pytest.raises(SyscallError):
        mm.fork()  # a copy would pass the limit too
    mm.unmap(reserve, 64 << 20)
    assert mf.charged == 0
    mf.close()


def test_memory_limit_from_the_bundle_gives_enomem_not_a_host_oom(snapbox, images, tmp_path):
    import json

    bundle = tmp_path / "limited"
    bundle.mkdir()
    config = json.loads((images / "memhog" / "config.json").read_text())
    config["root"]["path"] = str(images / "memhog" / "rootfs")
    config["linux"] = {"resources": {"memory": {"limit": 48 << 20}}}
    (bundle / "config.json").write_text(json.dumps(config))
    p = snapbox("run", "--bundle", str(bundle), "lim", check=False)
    assert p.returncode == 1 and "mmap: Out of memory" in p.stderr
