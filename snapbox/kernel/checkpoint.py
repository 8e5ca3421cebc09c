"""Checkpoint and restore: saving a paused kernel to an image, reading one back (eagerly or
lazily), and giving a restored kernel's processes new stubs.

Save order follows gVisor's Kernel.SaveTo: time stopped, the CPU feature set, the kernel
graph, memory last; a restore reads them in that order, refusing an incompatible host
before it decodes anything else.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Callable

import cbor2
import zstandard

from snapbox import __version__
from snapbox.kernel.filepages import read_reference
from snapbox.kernel.lifecycle import host_cpu_ns
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.signals import (
    SIGKILL,
    fit_xstate,
)
from snapbox.kernel.syscalls import MASK64
from snapbox.kernel.task import Run
from snapbox.kernel.written import METHOD as WRITE_PROTECTION
from snapbox.kernel.written import WrittenPages
from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.memfile.lazy import MemoryLost
from snapbox.memfile.memfile import (
    CHUNK_HEAD_SIZE,
    FILE_SIZE,
    intersect_runs,
    merge_runs,
    page_runs,
    subtract_runs,
)
from snapbox.platform import ptrace, uffd
from snapbox.platform.cpuid import XFEATURE_MAX, FeatureSet
from snapbox.platform.stub import ARCH_REQ_XCOMP_PERM, ARCH_SET_CPUID, Stub, StubError
from snapbox.state import (
    ImageError,
    SnapboxError,
    decode_graph,
    encode_graph,
    encode_graph_with_stats,
)
from snapbox.state.image import ImageReader, ImageWriter

if TYPE_CHECKING:
    from snapbox.kernel.kernel import Kernel

log = logging.getLogger("snapbox.kernel")

MAX_KERNEL_SECTION = 1 << 30  # bound on the decompressed kernel graph of an image
DIGESTS = "page digests (BLAKE2b of every page, compared with the image before)"


@dataclass
class MemoryDelta:
    """What an incremental image's memory holds, found in the sandbox process (the image
    may then be written by a child of it). With write tracking: `send`, the runs written
    (or filled) since the parent, or None for every page (the first image); `dropped`, the
    parent's runs that are holes now; `extents`, the file's data now, which the next image
    is compared with; `collected`, the runs the tracker handed over (given back if the image
    is not made). With digests, `old_digests`, the parent's (none for the first image): the
    image's writer compares every page's with them."""

    method: str
    send: list | None = None
    dropped: list = field(default_factory=list)
    extents: list = field(default_factory=list)
    collected: list = field(default_factory=list)
    old_digests: dict = field(default_factory=dict)

    def give_back(self, memfile) -> None:
        """The image was not made: what was collected for it is still to be saved."""
        if self.collected and memfile.written is not None:
            memfile.written.give_back(self.collected)


@dataclass
class LoadContext:
    """What a restore supplies that the image does not: host facts of the new sandbox."""

    rootfs: str | None = None  # the restoring bundle's rootfs (None: the one saved)
    host_sockets: list | None = None  # filled with the HostSockets made again, if a list
    network_mode: str = ""  # the restored sandbox's network mode (runtime.network)
    republish: bool = False  # restore --publish: the image's published ports are not bound again
    # A memory file that holds the image's chain already (a migration's rounds, applied as
    # they came): its path (/proc/PID/fd/N) and the id of the last pre-dump applied to it.
    memory: str | None = None
    memory_id: str | None = None
    # A clone's base memory (runtime.clones): a file holding the image's memory at its
    # offsets, shared by the clones of a pool; the image's memory section is not read.
    base: str | None = None
    # The host files' pages the base holds too: MemoryFile offset -> what load_base's
    # read_reference said of the file (FileCache.take_from_base checks it).
    base_files: dict = field(default_factory=dict)
    # A working set (see WorkingSet): loaded first by a lazy restore, or recorded there.
    working_set: str | None = None


def load_base(f: IO[bytes]) -> tuple[MemoryFile, dict]:
    """The memory of a whole image in a MemoryFile of its own, every chunk checked, and the
    pages of the host files the image references read in beside it: the base a pool's
    clones share (runtime.clones; LoadContext.base names its memfd). Returns it and the
    files read (LoadContext.base_files); a file that cannot be read as the image saw it is
    left out, and each clone reads it itself."""
    r = ImageReader(f)
    if r.meta.get("pre_dump") or r.meta.get("parent"):
        raise ImageError("clones are made of a whole image, not a pre-dump or an incremental one")
    r.read_section("cpuid")
    r.read_section("kernel")
    memory = MemoryFile()
    try:
        memory.load_chunks(r.section("memory"), anywhere=True)  # it hands out nothing itself
        summary = r.finish()
        files = {}
        for ref in summary.get("file_pages", []):
            entry = read_reference(memory, ref)
            if entry is not None:
                files[ref["offset"]] = entry
    except BaseException:
        memory.close()
        raise
    return memory, files


class WorkingSet:
    """The memory a restored program needs first (as REAP records it for serverless
    functions): the pages its processes touch from the restore until, after a syscall has
    returned, every task waits in one (a server done with its first request).
    Kept in a file of its own beside the image, tied to it by the image's id: a lazy
    restore given the file loads those pages before the program runs, all at once on
    every CPU, instead of stopping at each first touch; a restore given a path with no
    working set there (or one of another image) records one."""

    MAGIC = "snapbox working set"

    @staticmethod
    def read(path: str) -> dict | None:
        """The working set at `path`: {"image_id", "runs"}; None if there is no file.
        SnapboxError if the file is something else (it is never written over)."""
        try:
            with open(path, "rb") as f:
                data = cbor2.loads(f.read(64 << 20))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SnapboxError(f"cannot read the working set {path} ({e.strerror})") from None
        except (ValueError, cbor2.CBORDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("magic") != WorkingSet.MAGIC \
                or not isinstance(data.get("runs"), list):
            raise SnapboxError(f"{path} is not a working set (refusing to write over it)")
        return data

    @staticmethod
    def write(path: str, image_id: str, runs: list[tuple[int, int]]) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(cbor2.dumps({"magic": WorkingSet.MAGIC, "image_id": image_id, "runs": runs}))
        os.rename(tmp, path)


def describe_base(memory: MemoryFile, files: dict) -> int:
    """A memfd that tells the clones of a pool where their base is (its path in this
    process, /proc/PID/fd/N) and which host files' pages it holds; the refiller keeps it
    beside the base and each clone's restore reads it (read_base_description)."""
    fd = os.memfd_create("snapbox-base", os.MFD_CLOEXEC)
    os.write(fd, cbor2.dumps({"memory": f"/proc/{os.getpid()}/fd/{memory.fd}", "files": files}))
    return fd


def read_base_description(path: str) -> tuple[str, dict]:
    """The base memory's path and its files (LoadContext.base, .base_files) from the
    description at `path` (describe_base)."""
    try:
        with open(path, "rb") as f:
            desc = cbor2.loads(f.read())
        return desc["memory"], desc["files"]
    except OSError as e:
        raise SnapboxError(f"cannot open the clones' base {path} ({e.strerror})") from None
    except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
        raise SnapboxError(f"the clones' base {path} is not described right") from None


class Checkpointing:
    """Kernel methods for checkpoint and restore (mixed into Kernel)."""

    def save(self, f: IO[bytes], compress: bool = True, meta: dict | None = None,
             progress: Callable[[int, int], None] | None = None, store_file_pages: bool = False,
             final: bool = False, parent: dict | None = None, handoff: bool = False) -> dict:
        """Write a checkpoint image of this (paused) kernel to `f`. Returns the image summary.

        Order (as gVisor's Kernel.SaveTo): time stopped, CPU features, kernel graph, memory;
        time goes on again when the image is written (or the save fails): a sandbox that
        goes on running does not see the time the checkpoint took. `progress(done, total)`
        is called as memory bytes are written. Host files' cached pages are references the
        restore reads back, unless `store_file_pages`.

        Connections through the host are read in TCP_REPAIR mode and stay in it when the
        image is `final` (the sandbox ends: closed so, they say nothing to their peers);
        otherwise, or if the save fails, they leave it again. With `handoff` (the image is
        to run elsewhere while this kernel waits, paused), they are closed so too, their
        state kept to be taken back if this kernel goes on after all (unpause).

        With `parent` (the "id" and tracking state of this sandbox's last pre-dump), memory
        holds only the pages written since, and the trailer the pages dropped since; the
        summary's "tracking" is what the next image would be compared with.
        """
        if not self.paused:
            raise SnapboxError("internal: save needs a paused kernel")
        self.unshare_memory()
        self.memfile.finish_loading()
        time_was_stopped = self.timekeeper.stopped
        self.timekeeper.stop()
        written = False
        try:
            for t in self.tasks.live_tasks():
                regs = ptrace.copy_regs(t.regs)
                t.saved_syscall = -1
                if t.run is Run.SYSCALL:
                    # Rewind to the syscall instruction: the task will make the call again.
                    t.saved_syscall = regs.orig_rax
                    regs.rip -= 2
                    regs.rax = regs.orig_rax
                t.saved_regs = ptrace.regs_to_tuple(regs)
                t.saved_fpstate = ptrace.get_xstate(t.host_tid, max(self.features.xsave_size, 512))
                t.cpu_base = self.cpu_time_ns(t)
                t.cpu_start = host_cpu_ns(t.host_tid)
            header = self._header(compress, meta, parent)
            w = ImageWriter(f, header)
            with w.section("cpuid") as s:
                s.write_chunk(encode_graph(self.features))
            skip = self.file_cache.before_image(store_file_pages)
            references = len(skip)
            if self.vdso is not None:
                skip = sorted([*skip, self.vdso.unsaved()])
            graph, stats = encode_graph_with_stats(self)
            with w.section("kernel") as s:
                s.write_chunk(zstandard.ZstdCompressor(level=3).compress(graph))
            summary = {"graph_bytes": len(graph), "graph_sha256": hashlib.sha256(graph).digest(), "types": stats,
                       "memory_allocated": self.memfile.allocated - self.file_cache.unread_bytes(),
                       "file_references": references, "file_bytes_referenced": self.file_cache.referenced_bytes(),
                       "file_pages": self.file_cache.references()}
            delta = None if parent is None else self.memory_delta(parent, skip)
            try:
                tracking = self._save_memory(w, compress, progress, skip, summary, delta)
                w.finish(summary)
            except BaseException:
                if delta is not None:
                    delta.give_back(self.memfile)
                raise
            summary["image_id"] = header["image_id"]
            if tracking is not None:
                summary["tracking"] = tracking
            summary["sections"] = w.summary
            if handoff:
                for h in self.host_sockets:
                    h.let_go()
            summary["connections"] = [h.report() for h in self.host_sockets if h.is_connection]
            written = True
            return summary
        finally:
            if not ((final or handoff) and written):
                for h in self.host_sockets:
                    h.resume()
            for t in self.tasks.live_tasks():
                t.saved_regs = ()
                t.saved_fpstate = b""
                t.saved_syscall = -1
            if not time_was_stopped:
                self.timekeeper.resume()

    def memory_delta(self, parent: dict | None, skip: list = ()) -> MemoryDelta:
        """What an image made after `parent` (None: the first of a chain) must save of
        memory, outside `skip`; writes are tracked from the first call on. Order matters:
        written pages are collected (and protected again) before the extents are read,
        and both before any page is: a change after either shows in the next image."""
        method = self.track_writes()
        if method == DIGESTS:
            return MemoryDelta(method, old_digests=(parent or {}).get("digests", {}))
        tracker = self.memfile.written
        collected = tracker.collect()
        extents = self.memfile.extents(skip)
        if parent is None or parent.get("method") != WRITE_PROTECTION:
            return MemoryDelta(method, None, [], extents, [])
        send = intersect_runs(merge_runs(collected + subtract_runs(extents, parent["extents"])), extents)
        return MemoryDelta(method, send, subtract_runs(parent["extents"], extents), extents, collected)

    def track_writes(self) -> str:
        """Note written pages from now on, if not already; returns how they are found."""
        if self.memfile.written is not None:
            return WRITE_PROTECTION
        self.unshare_memory()
        # A lazy restore's userfaultfds are the stubs' one each: theirs must go first.
        self.memfile.finish_loading()
        self._stop_catching()
        was_paused = self.paused
        self.pause()  # each stub makes its userfaultfd: none may be running
        try:
            WrittenPages.start(self.memfile, [tg.mm for tg in self.tasks.pidns.groups.values()])
        except OSError as e:
            log.info("written pages are found by digests: cannot track writes here (%s)", e)
            return DIGESTS
        finally:
            if not was_paused:
                self.unpause()
        return WRITE_PROTECTION

    def pre_dump(self, f: IO[bytes], delta: MemoryDelta, compress: bool = True, meta: dict | None = None,
                 progress: Callable[[int, int], None] | None = None, parent: dict | None = None) -> dict:
        """Write a pre-dump: CPU features and memory only (all of it, or with `parent` the
        pages written since that pre-dump, as `delta` says), while the sandbox runs on. A
        page the program changes while it is written is sent again by the next image.
        Returns the summary, with the "tracking" state the next image is compared with."""
        header = self._header(compress, meta, parent, pre_dump=True)
        w = ImageWriter(f, header)
        with w.section("cpuid") as s:
            s.write_chunk(encode_graph(self.features))
        summary: dict = {"memory_allocated": self.memfile.allocated}
        summary["tracking"] = self._save_memory(w, compress, progress, [], summary, delta)
        w.finish(summary)
        summary["sections"] = w.summary
        summary["image_id"] = header["image_id"]
        summary["image_bytes"] = w.pos
        return summary

    def _header(self, compress: bool, meta: dict | None, parent: dict | None, pre_dump: bool = False) -> dict:
        header = {"snapbox": __version__, "created": time.time(), "host": os.uname().nodename,
                  "kernel": os.uname().release, "compression": "zstd" if compress else "none",
                  "image_id": uuid.uuid4().hex}
        if pre_dump:
            header["pre_dump"] = True
        if parent is not None and parent.get("id"):
            header["parent"] = {"path": parent["path"], "id": parent["id"]}
        header.update(meta or {})
        return header

    def _save_memory(self, w: ImageWriter, compress: bool, progress: Callable[[int, int], None] | None,
                     skip: list, summary: dict, delta: MemoryDelta | None) -> dict | None:
        """The memory section: every page with data (no `delta`, or the first image of a
        chain), or the pages `delta` says changed since the parent (or whose digest differs
        from the parent's), "dropped" (in `summary`) the runs the parent had that hold no
        data now. Returns the tracking state the next image is compared with (None
        without a delta)."""
        zeros: list = []
        digests: dict = {}
        tracked = delta is not None and delta.method == WRITE_PROTECTION
        total = sum(n for _, n in delta.send) if tracked and delta.send is not None else self.memfile.allocated
        report = (lambda done: progress(done, total)) if progress else None
        if delta is None or (tracked and delta.send is None):
            chunks = self.memfile.save_chunks(compress, lambda: w.pos, report, skip)
        elif tracked:
            chunks = self.memfile.save_runs(compress, delta.send, zeros, report)
        else:
            chunks = self.memfile.save_changed(compress, delta.old_digests, digests, skip, report)
        with w.section("memory") as s:
            for chunk, crc in chunks:
                s.write_chunk(chunk, crc)
        summary["memory_saved"] = self.memfile.saved_bytes
        if delta is None:
            return None
        summary["written_pages"] = delta.method
        if not tracked:
            summary["dropped"] = page_runs(off for off in delta.old_digests if off not in digests)
            return {"method": delta.method, "digests": digests}
        if delta.send is not None:
            summary["dropped"] = merge_runs(delta.dropped + zeros)
        return {"method": delta.method, "extents": delta.extents}

    @classmethod
    def read_image(cls, f: IO[bytes], ctx: LoadContext, check_cpu: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   load_memory: bool = True, lazy: bool = False,
                   on_meta: Callable[[dict], None] | None = None) -> tuple[Kernel, dict]:
        """Read a whole image: the CPU feature set first (checked against this host unless
        `check_cpu` is false), then the graph, then memory (checked, and copied into the
        MemoryFile if `load_memory`), then the trailer. Starts nothing. Returns the kernel
        and the trailer's summary.

        With `lazy` (and `f` a regular file), memory stays in the image: only its chunks'
        places are read here, and each chunk is loaded (and checked) when first needed, or
        by background threads meanwhile. A read lease on the image makes whoever opens it
        to change it wait until all is loaded. `on_meta(header)` runs before anything is
        decoded (the sandbox joins its network there).

        An incremental image (made with a parent) is read on top of its chain of pre-dumps,
        oldest first, each checked to be the very image its child was made after; the
        summary's "chain" names them. Its memory is then read eagerly."""
        r = ImageReader(f)
        if r.meta.get("pre_dump"):
            raise ImageError("image is a pre-dump (memory only): restore the checkpoint made with "
                             "--parent-path after it")
        if on_meta is not None:
            on_meta(r.meta)
        working = None
        if ctx.working_set is not None:
            working = WorkingSet.read(ctx.working_set)
            if working is None or working.get("image_id") != r.meta.get("image_id"):
                working = None  # none yet, or of an image made before: recorded anew
        features = decode_graph(r.read_section("cpuid"))
        if not isinstance(features, FeatureSet):
            raise ImageError("image cpuid section does not hold a CPU feature set")
        if check_cpu:
            features.check_host(FeatureSet.host())
        try:
            raw = zstandard.ZstdDecompressor().decompress(r.read_section("kernel"),
                                                         max_output_size=MAX_KERNEL_SECTION)
        except zstandard.ZstdError as e:
            raise ImageError(f"image kernel section is corrupt ({e})") from None
        kernel = decode_graph(raw, ctx)
        if not isinstance(kernel, cls):
            raise ImageError("image kernel section does not hold a kernel")
        kernel.paused = True
        kernel.restores += 1
        if ctx.working_set is not None and working is None:
            kernel.recording = (ctx.working_set, r.meta.get("image_id"))
        total = kernel.memfile.allocated
        report = (lambda done: progress(done, total)) if progress else None
        name = getattr(f, "name", None)
        if ctx.memory is not None:
            if (r.meta.get("parent") or {}).get("id") != ctx.memory_id:
                raise ImageError("the image was not made after the memory it is restored on")
            chain = []
        else:
            chain = parent_chain(r.meta, os.path.dirname(os.path.abspath(name)) if isinstance(name, str) else None)
        if load_memory:
            for path, ancestor in chain:
                with ancestor.f:
                    apply_pre_dump(kernel.memfile, ancestor, path)
        if load_memory and ctx.base is not None:
            if chain:
                raise ImageError("an incremental image cannot be the base of clones")
            for _ in r.section_index("memory", CHUNK_HEAD_SIZE):  # its data is in the base already
                pass
            kernel._use_base(ctx.base_files)
        elif load_memory and lazy and _is_file(f) and not chain and ctx.memory is None:
            kernel._load_lazily(r, f)
            if working is not None:
                n = kernel.memfile.lazy.prefetch(working["runs"])
                log.info("working set %s: %d MB loaded first", ctx.working_set, n >> 20)
        elif load_memory:
            kernel.memfile.load_chunks(r.section("memory"), report)
        else:
            for _ in r.section("memory"):
                pass
        try:
            summary = r.finish()
            digest = summary.get("graph_sha256")
            if digest is not None and digest != hashlib.sha256(raw).digest():
                # The chunks' checksums held, yet the graph is not the one written: whatever
                # it says (of host files, say) is not to be believed.
                raise ImageError("image is corrupt (its kernel graph does not match the trailer's digest)")
            if load_memory:
                _drop(kernel.memfile, summary, "the image")
                try:
                    kernel.file_cache.restore()
                except MemoryLost as e:
                    kernel._memory_lost(e)  # a lazy restore: the sandbox ends once started
        except BaseException:
            kernel.memfile.stop_loading()  # a lazy restore's loaders
            raise
        summary["meta"] = r.meta
        summary["format"] = r.version
        summary["sections"] = r.sections_read
        summary["chain"] = [path for path, _ in chain]
        for _, ancestor in chain:
            ancestor.f.close()
        return kernel, summary

    @classmethod
    def load(cls, f: IO[bytes], ctx: LoadContext,
             progress: Callable[[int, int], None] | None = None) -> Kernel:
        """Restore from an image: read it whole and checked, then give every process a new
        stub with its memory mapped and its registers set. No task runs until start()."""
        kernel, _ = cls.read_image(f, ctx, progress=progress)
        kernel.attach_stubs()
        return kernel

    def record_working_set(self) -> None:
        """Write the working set being recorded (Kernel.recording): every page of the
        MemoryFile that some process's stub has mapped in (touched, or read ahead around a
        touch by the host kernel), found in the stubs' page tables (/proc/PID/pagemap)."""
        path, image_id = self.recording
        self.recording = None
        touched = []
        for mm in {id(tg.mm): tg.mm for tg in self.tasks.pidns.groups.values() if tg.mm is not None}.values():
            if mm.stub is None:
                continue
            try:
                fd = os.open(f"/proc/{mm.stub.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                log.warning("no working set recorded: %s", e.strerror)
                return
            try:
                for vma in mm.vmas:
                    if vma.based:
                        continue
                    entries = array.array("Q", os.pread(fd, (vma.end - vma.start) // PAGE_SIZE * 8,
                                                        vma.start // PAGE_SIZE * 8))
                    touched += [vma.offset + i * PAGE_SIZE for i, e in enumerate(entries) if e >> 63]
            finally:
                os.close(fd)
        runs = page_runs(sorted(set(touched)))
        try:
            WorkingSet.write(path, image_id, runs)
        except OSError as e:
            log.warning("cannot write the working set %s (%s)", path, e.strerror)
            return
        log.info("working set recorded in %s: %d MB", path, sum(n for _, n in runs) >> 20)

    def _use_base(self, files: dict) -> None:
        """A clone's memory: its processes' private mappings and the host files' pages
        the base holds (`files`, see LoadContext.base_files) stay in the base, to be mapped
        private by their stubs; the rest (shared memory, tmpfs files) is copied into its
        own memory file."""
        kept = self.file_cache.take_from_base(files)
        for mm in {id(tg.mm): tg.mm for tg in self.tasks.pidns.groups.values() if tg.mm is not None}.values():
            for vma in mm.vmas:
                if vma.pages is not None:
                    vma.based = vma.pages.in_base
                elif not vma.shared:
                    vma.based = True
                    kept.append((vma.offset, vma.end - vma.start))
        self.memfile.copy_from_base(merge_runs(sorted(kept)))

    def unshare_memory(self) -> None:
        """Give a clone's processes their own copy of every page still in the base (what
        an image, or the tracking of written pages, needs): they are stopped meanwhile."""
        if self.memfile.base < 0:
            return
        was_paused = self.paused
        if not was_paused:
            self.pause()
        for mm in {id(tg.mm): tg.mm for tg in self.tasks.pidns.groups.values() if tg.mm is not None}.values():
            if mm.stub is not None:
                mm.unshare()
        self.file_cache.own_all()
        self.memfile.drop_base()
        if not was_paused:
            self.unpause()

    def _load_lazily(self, r: ImageReader, f: IO[bytes]) -> None:
        self.loaded = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop.add_reader(self.loaded, self._memory_loaded)
        fd = os.dup(f.fileno())
        # A read lease: whoever opens the image to write or truncate it waits (and SIGIO tells
        # us) until the rest of memory is loaded and the image closed.
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            log.warning("no lease on the image (%s): it must not change until memory is loaded", e.strerror)
        index = r.section_index("memory", CHUNK_HEAD_SIZE)
        self.memfile.load_lazily(fd, index, lambda: os.eventfd_write(self.loaded, 1))

    def _image_changing(self) -> None:
        """Someone opens the image of a lazy restore to change it: load the rest first."""
        if self.memfile.lazy is None:
            return
        log.info("the image is being changed: loading the rest of memory now")
        try:
            self.memfile.finish_loading()  # closes the image: the lease goes, their open goes on
        except ImageError as e:
            self._memory_lost(e)

    def _catch_first_touches(self, mm: MemoryManager) -> None:
        """Have the stub of `mm` stop at its first touch of memory a lazy restore has not
        loaded yet, and tell us."""
        lazy = self.memfile.lazy
        ranges = [(v.start, v.end - v.start) for v in mm.vmas if lazy.pending(v.offset, v.end - v.start)]
        if not ranges:
            return
        try:
            fd = uffd.open_for(mm.stub)
        except StubError as e:
            # userfaultfd(2) may be filtered out (a container's seccomp profile): load it all now.
            log.warning("%s: memory is loaded before the program runs", e)
            try:
                self.memfile.finish_loading()
            except MemoryLost as lost:
                self._memory_lost(lost)
            return
        self.faults[mm] = fd
        for start, length in ranges:
            uffd.register(fd, start, length)
        self.loop.add_reader(fd, lambda: self._on_faults(mm, fd))

    def _on_faults(self, mm: MemoryManager, fd: int) -> None:
        for addr in uffd.faults(fd):
            vma = mm.find(addr)
            if vma is not None:
                try:
                    self.memfile.ensure_loaded(vma.offset + (addr - vma.start), PAGE_SIZE)
                except ImageError as e:
                    self._memory_lost(e)
                    return
            uffd.resolve(fd, addr)

    def _memory_loaded(self) -> None:
        """The lazy restore's background threads are done (or one failed)."""
        try:
            self.memfile.finish_loading()
        except ImageError as e:
            self._memory_lost(e)
            return
        self._stop_catching()

    def _stop_catching(self) -> None:
        for fd in self.faults.values():
            self.loop.remove_reader(fd)
            os.close(fd)  # the registrations go with it, and waiting threads wake
        self.faults.clear()
        if self.loaded >= 0:
            self.loop.remove_reader(self.loaded)
            os.close(self.loaded)
            self.loaded = -1

    def _memory_lost(self, e: MemoryLost) -> None:
        """Memory a lazy restore left in the image cannot be read back: the sandbox ends,
        its processes killed with SIGKILL (before start(): as soon as it starts)."""
        if not self.started:
            self.memory_error = self.memory_error or e
            return
        if self.memfile.lazy is None:
            return  # ended already, by a loss found before
        log.error("memory could not be restored: %s; every process is killed", e)
        # No more loading: freeing the processes' memory must not go back to the image.
        self.memfile.stop_loading()
        self._stop_catching()
        for tg in list(self.tasks.pidns.groups.values()):
            self.exit_group(tg, SIGKILL)

    def attach_stubs(self) -> None:
        """After read_image: give every process a new stub with its memory mapped and its
        registers set; the clock stays stopped until start()."""
        self.timekeeper.stopped = True
        host = FeatureSet.host()
        stubs: dict[int, Stub] = {}  # id(mm) -> its stub: processes sharing memory share one
        for tg in self.tasks.pidns.groups.values():
            if tg.exit_status is not None or not tg.tasks:
                continue
            stub = stubs.get(id(tg.mm))
            first = stub is None
            if first:
                stub = stubs[id(tg.mm)] = self.spawn_stub()
                tg.mm.attach(stub, lazy=self.memfile.lazy is not None)
                if self.memfile.lazy is not None:
                    self._catch_first_touches(tg.mm)
            for nr in range(XFEATURE_MAX):
                if tg.xfeatures_granted >> nr & 1:
                    stub.arch_prctl(stub.pid, ARCH_REQ_XCOMP_PERM, nr)
            for i, t in enumerate(tg.tasks):
                if not t.saved_regs:
                    raise ImageError(f"image holds task {t.tid} without registers")
                host_tid = stub.pid if first and i == 0 else stub.clone_thread(stub.pid)
                if t.cpuid_faulting:
                    stub.arch_prctl(host_tid, ARCH_SET_CPUID, 0)
                if int.from_bytes(t.saved_fpstate[512:520], "little") & tg.xfeatures_granted:
                    stub.touch_tiles(host_tid)
                regs = ptrace.regs_from_tuple(t.saved_regs)
                regs.orig_rax = MASK64
                ptrace.set_xstate(host_tid, fit_xstate(t.saved_fpstate, host))
                self._bind(t, host_tid, regs)
                t.saved_regs = ()
                t.saved_fpstate = b""


def _is_file(f: IO[bytes]) -> bool:
    """Whether `f` is a regular file (an image a lazy restore can go back to), not a pipe."""
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError):
        return False


MAX_CHAIN = 64  # pre-dumps an incremental image may stand on


def parent_chain(meta: dict, here: str | None = None) -> list[tuple[str, ImageReader]]:
    """The pre-dumps an image's header names as its parent, and theirs, oldest first:
    each opened and checked (present, a pre-dump, the very image the child was made
    after), its reader positioned at its memory section. A parent is looked for where it
    was written, then under its name beside the image (`here` is its directory) or its
    child: a chain copied elsewhere together, or received by a migration, still reads."""
    chain: list[tuple[str, ImageReader]] = []
    child, parent, beside = "the image", meta.get("parent"), here
    while parent is not None:
        if not isinstance(parent, dict) or not isinstance(parent.get("path"), str) or len(chain) >= MAX_CHAIN:
            raise ImageError(f"{child} names a malformed parent image")
        path = parent["path"]
        r = _open_parent(path, parent.get("id"))
        for where in (here, beside):
            if r is None and where is not None:
                path = os.path.join(where, os.path.basename(parent["path"]))
                r = _open_parent(path, parent.get("id"))
        if r is None:
            path = parent["path"]
            try:
                f = open(path, "rb", buffering=1 << 20)
            except OSError as e:
                raise ImageError(f"parent image {path} of {child} cannot be read ({e.strerror})") from None
            f.close()
            raise ImageError(f"parent image {path} of {child} has changed since (it is another image now)")
        if not r.meta.get("pre_dump"):
            raise ImageError(f"parent image {path} of {child} is not a pre-dump")
        r.read_section("cpuid")
        chain.append((path, r))
        child, parent, beside = path, r.meta.get("parent"), os.path.dirname(path)
    return chain[::-1]


def _open_parent(path: str, image_id: str | None) -> ImageReader | None:
    """The image at `path` if it is the one with `image_id`, else None."""
    try:
        f = open(path, "rb", buffering=1 << 20)
    except OSError:
        return None
    try:
        r = ImageReader(f)
    except ImageError:
        f.close()
        return None
    if r.meta.get("image_id") != image_id:
        f.close()
        return None
    return r


def apply_pre_dump(memfile, r: ImageReader, where: str) -> None:
    """Load the memory of a pre-dump (`r` read up to its memory section) on top of what
    `memfile` holds, and punch out what it says was dropped; `where` names it in errors."""
    memfile.load_chunks(r.section("memory"), anywhere=True)
    _drop(memfile, r.finish(), where)


def _drop(memfile, summary: dict, where: str) -> None:
    """Punch out the pages an incremental image says hold nothing now."""
    for run in summary.get("dropped") or []:
        if not (isinstance(run, (list, tuple)) and len(run) == 2 and all(isinstance(x, int) for x in run)) \
                or run[0] % PAGE_SIZE or run[1] % PAGE_SIZE or run[1] <= 0 or run[0] + run[1] > FILE_SIZE:
            raise ImageError(f"{where} holds a malformed list of dropped pages")
        memfile.punch(run[0], run[1])
