"""Linux AIO contexts (io_setup(2)): a ring of completion events in the process's own
memory, laid out as Linux lays it out (struct aio_ring), so that a program (or libaio)
may reap events from it without a syscall.

The sentry does each request when it is submitted and puts its event in the ring at
once; what a context keeps is where its ring is and who waits for events. The ring is
process memory and the context is part of the process, so both are in every image.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from snapbox.kernel.waiter import WaitQueue
from snapbox.memfile import PAGE_SIZE
from snapbox.state import savable

AIO_RING_MAGIC = 0xA10A10A1
RING_HEADER = struct.Struct("<8I")  # id, nr, head, tail, magic, compat_features, incompat_features, header_length
IO_EVENT = struct.Struct("<QQqq")  # data, obj, res, res2
AIO_MAX_NR = 65536  # /proc/sys/fs/aio-max-nr


def ring_size(nr_events: int) -> tuple[int, int]:
    """(events the ring holds, bytes mapped for it) for io_setup(nr_events), as Linux sizes
    it (ioctx_alloc, aio_setup_ring): at least four per CPU, doubled, whole pages."""
    n = max(nr_events, (os.cpu_count() or 1) * 4) * 2
    size = (RING_HEADER.size + IO_EVENT.size * n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return (size - RING_HEADER.size) // IO_EVENT.size, size


@savable
@dataclass(eq=False)
class AioContext:
    """One io_setup() context: its ring (at `ring`, the context's id) and its waiters."""

    ring: int = 0
    nr: int = 0  # events the ring holds
    size: int = 0  # bytes mapped for it
    max_reqs: int = 0  # what io_setup asked for (counted against aio-max-nr)
    waiters: WaitQueue = field(default_factory=WaitQueue)  # io_getevents callers

    def header(self, mm) -> tuple[int, int]:
        """(head, tail) as the ring in memory says (a program may have moved head)."""
        _, _, head, tail, *_ = RING_HEADER.unpack(mm.read(self.ring, RING_HEADER.size))
        return head % self.nr, tail % self.nr

    def init_ring(self, mm) -> None:
        mm.write(self.ring, RING_HEADER.pack(0, self.nr, 0, 0, AIO_RING_MAGIC, 1, 0, RING_HEADER.size))

    def queued(self, mm) -> int:
        head, tail = self.header(mm)
        return (tail - head) % self.nr

    def complete(self, mm, data: int, obj: int, res: int) -> None:
        """Put a request's event at the ring's tail."""
        _, tail = self.header(mm)
        mm.write(self.ring + RING_HEADER.size + tail * IO_EVENT.size, IO_EVENT.pack(data, obj, res, 0))
        mm.write(self.ring + 12, struct.pack("<I", (tail + 1) % self.nr))
        self.waiters.notify()

    def take(self, mm, count: int) -> bytes:
        """Up to `count` events from the ring's head, consumed."""
        head, tail = self.header(mm)
        n = min(count, (tail - head) % self.nr)
        out = bytearray()
        for i in range(n):
            pos = (head + i) % self.nr
            out += mm.read(self.ring + RING_HEADER.size + pos * IO_EVENT.size, IO_EVENT.size)
        mm.write(self.ring + 8, struct.pack("<I", (head + n) % self.nr))
        return bytes(out)
