"""Live migration: `snapbox migrate` (the source) and `restore --listen` or `restore
--image-path -` (the receiver), speaking over a TCP connection or a command's stdin and
stdout.

The stream is frames (a 4-byte length and a CBOR map) and images:

    source                                   receiver
    hello {token, cpu, id}          ->       checks the token, the CPU features, the id
                                    <-       ready | refused {error}
    image {name} + an image         ->       (round 1: a pre-dump of all memory; each later
                                    <-        round: a pre-dump of the pages written since)
                                             stored | refused {error}
    final {name, size} + bytes      ->       (paused: the pages written since, and the kernel)
                                    <-       started | refused {error}

Rounds run while the program runs; the last one is sent paused, and the source ends only
once the receiver says `started`. Whatever fails before that (a refusal, a broken link, a
receiver that dies, Ctrl-C), the source resumes and goes on as it was. The receiver applies
each round, as it arrives, to a memory file of its own (see Rounds), and the sandbox it
restores takes that file over: the freeze then reads only the last image (the pages
written since the last round, and the kernel), never the whole chain.

Written pages are found by write-protection (snapbox.kernel.written: the host kernel notes
each first write to a page since the round before), or where the host cannot, by comparing
a digest of every page with the round before's; the summary says which.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import cbor2

from snapbox.state import ImageError, SnapboxError
from snapbox.state.image import ImageReader

MAGIC = b"SNAPMIG1"  # what a migration stream starts with (an image starts with SNAPBOX)
MAX_FRAME = 64 << 20
QUICK = 0.025  # seconds: a running round this short leaves about as little for the paused one
_LEN = struct.Struct(">I")


class MigrationError(SnapboxError):
    """A migration that did not happen: the source goes on running."""


class Channel:
    """Frames and bytes over a pair of file objects (a socket's, or a command's pipes)."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes], what: str) -> None:
        self.reader, self.writer, self.what = reader, writer, what

    def send(self, **frame: Any) -> None:
        blob = cbor2.dumps(frame)
        self.send_raw(_LEN.pack(len(blob)) + blob)

    def send_raw(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            self.writer.flush()
        except OSError as e:
            raise MigrationError(f"the connection to {self.what} broke ({e.strerror or e})") from None

    def fileno(self) -> int:
        """The fd an image may be written to directly (after what was sent is flushed)."""
        return self.writer.fileno()

    def send_file(self, kind: str, path: str) -> int:
        size = os.path.getsize(path)
        self.send(type=kind, name=os.path.basename(path), size=size)
        try:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.writer, 1 << 20)
            self.writer.flush()
        except OSError as e:
            raise MigrationError(f"the connection to {self.what} broke ({e.strerror or e})") from None
        return size

    def receive(self) -> dict:
        head = self._exact(_LEN.size)
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME:
            raise MigrationError(f"{self.what} sent a malformed frame")
        try:
            frame = cbor2.loads(self._exact(n))
        except cbor2.CBORDecodeError:
            raise MigrationError(f"{self.what} sent a malformed frame") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise MigrationError(f"{self.what} sent a malformed frame")
        return frame

    def receive_into(self, path: str, size: int) -> None:
        with open(path, "wb") as f:
            left = size
            while left:
                data = self.reader.read(min(left, 1 << 20))
                if not data:
                    raise MigrationError(f"{self.what} ended the stream in the middle of an image")
                f.write(data)
                left -= len(data)

    def _exact(self, n: int) -> bytes:
        try:
            data = self.reader.read(n)
        except OSError as e:
            raise MigrationError(f"the connection to {self.what} broke ({e.strerror or e})") from None
        if len(data) < n:
            raise MigrationError(f"{self.what} closed the connection")
        return data


def _expect(channel: Channel, want: str) -> dict:
    frame = channel.receive()
    if frame["type"] == "refused":
        raise MigrationError(f"the receiver refused: {frame.get('error', 'no reason given')}")
    if frame["type"] != want:
        raise MigrationError(f"the receiver answered {frame['type']!r} where {want!r} was due")
    return frame


def read_token(path: str | None) -> str:
    """The shared secret in a --token-file (its first line)."""
    if path is None:
        return ""
    try:
        with open(path) as f:
            token = f.readline().strip()
    except OSError as e:
        raise SnapboxError(f"cannot read the token file {path} ({e.strerror})") from None
    if not token:
        raise SnapboxError(f"the token file {path} is empty")
    return token


# -- the source ---------------------------------------------------------------------------------

@dataclass
class Round:
    bytes: int  # image bytes sent
    pages: int  # memory pages in it
    seconds: float

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "pages": self.pages, "seconds": round(self.seconds, 4)}


@dataclass
class Summary:
    rounds: list = field(default_factory=list)  # [Round]
    freeze_ms: float = 0.0  # from the pause to the receiver's "started"
    total_s: float = 0.0
    converged: bool = True
    method: str = ""  # how written pages were found
    connections: list = field(default_factory=list)  # host TCP connections and what became of each

    def as_dict(self) -> dict:
        return {"rounds": [r.as_dict() for r in self.rounds], "bytes": sum(r.bytes for r in self.rounds),
                "freeze_ms": round(self.freeze_ms, 1), "total_s": round(self.total_s, 3),
                "converged": self.converged, "method": self.method, "connections": self.connections}


def connect(dest: str) -> tuple[Channel, Callable[[], None]]:
    """A channel to DEST (tcp://HOST:PORT or exec:COMMAND) and what closes it."""
    if dest.startswith("tcp://"):
        host, _, port = dest[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise SnapboxError(f"--to {dest}: expected tcp://HOST:PORT")
        try:
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        except OSError as e:
            raise MigrationError(f"cannot connect to {dest} ({e.strerror or e})") from None
        s.settimeout(None)
        reader, writer = s.makefile("rb"), s.makefile("wb")

        def close() -> None:
            for x in (reader, writer, s):
                x.close()
        return Channel(reader, writer, dest), close
    if dest.startswith("exec:"):
        command = dest[len("exec:"):].strip()
        if not command:
            raise SnapboxError("--to exec: needs a command")
        try:
            p = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as e:
            raise MigrationError(f"cannot run {command!r} ({e.strerror})") from None

        def close() -> None:
            for x in (p.stdin, p.stdout):
                with contextlib.suppress(OSError):  # a pipe to a receiver that is gone
                    x.close()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return Channel(p.stdout, p.stdin, f"the receiver ({command})"), close
    raise SnapboxError(f"--to {dest}: expected tcp://HOST:PORT or exec:COMMAND")


def migrate(container, dest: str, token: str = "", max_rounds: int = 8, small: int = 1 << 20,
            report: Callable[[str], None] | None = None) -> Summary:
    """Move `container` to the receiver at `dest` while it runs (see the module's doc)."""
    from snapbox.platform.cpuid import FeatureSet
    from snapbox.state import encode_graph

    t0 = time.monotonic()
    summary = Summary()
    work = tempfile.mkdtemp(prefix=f".migrate-{container.id}-", dir=container.root)
    close: Callable[[], None] | None = None
    paused = False
    try:
        channel, close = connect(dest)
        channel.send_raw(MAGIC)
        channel.send(type="hello", token=token, cpu=encode_graph(FeatureSet.host()))
        _expect(channel, "ready")
        parent = None
        for n in range(1, max_rounds + 1):
            start = time.monotonic()
            channel.send(type="image", name=f"round-{n}")
            # The pre-dump goes straight into the stream, written by the sandbox's child.
            reply = container.checkpoint("-", pre_dump=True, parent_path=parent, image_fd=channel.fileno())
            _expect(channel, "stored")
            size = reply.get("image_bytes", 0)
            pages = reply.get("memory_saved", 0) // 4096
            summary.method = reply.get("method", summary.method)
            summary.rounds.append(Round(size, pages, time.monotonic() - start))
            if report:
                report(_round_line(n, summary.rounds[-1]))
            parent = "-"
            if pages * 4096 <= small or summary.rounds[-1].seconds <= QUICK:
                break  # what is left is about what the paused round will take
            if n >= 3 and pages >= 0.9 * summary.rounds[-2].pages:
                summary.converged = False  # the program writes as fast as rounds go: stop here
                break
        else:
            summary.converged = False
        freeze = time.monotonic()
        container.pause()
        paused = True
        final = os.path.join(work, "final.img")
        last = container.checkpoint(final, leave_running=True, parent_path=parent, handoff=True)
        summary.connections = last.get("connections") or []
        size = channel.send_file("final", final)
        _expect(channel, "started")
        summary.freeze_ms = (time.monotonic() - freeze) * 1000
        summary.rounds.append(Round(size, last.get("memory_saved", 0) // 4096, time.monotonic() - freeze))
        paused = False
        container.delete(force=True)  # the receiver runs it now
    except (MigrationError, KeyboardInterrupt, SnapboxError) as e:
        if paused:
            container.resume()
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        raise MigrationError(f"migration of {container.id} failed: {why}; it goes on running here") from None
    except BaseException:
        if paused:
            container.resume()
        raise
    finally:
        if close is not None:
            close()
        shutil.rmtree(work, ignore_errors=True)
    summary.total_s = time.monotonic() - t0
    return summary


def _round_line(n: int, r: Round) -> str:
    rate = r.bytes / r.seconds / (1 << 20) if r.seconds else 0.0
    return (f"round {n}: {r.pages} pages, {r.bytes / (1 << 20):.1f} MB sent in {r.seconds * 1000:.0f} ms "
            f"({rate:.0f} MB/s)")


# -- the receiver -------------------------------------------------------------------------------

def receive(channel: Channel, root: str, cid: str, token: str,
            start: Callable[[str], Any], check_bundle: Callable[[], None]) -> Any:
    """Take a migration stream: check the hello, apply each round to a memory file, and
    with the final image call `start(final image path, (memory file path, last round's
    id))`, which creates and starts the container; answer each step. Returns what `start`
    returned."""
    from snapbox.platform.cpuid import FeatureSet
    from snapbox.runtime.container import Container
    from snapbox.state import decode_graph

    if channel._exact(len(MAGIC)) != MAGIC:
        raise MigrationError("the stream is not a snapbox migration")
    hello = channel.receive()
    if hello.get("type") != "hello":
        raise MigrationError("the stream is not a snapbox migration")

    def refuse(error: str) -> MigrationError:
        channel.send(type="refused", error=error)
        return MigrationError(error)

    if token and not hmac.compare_digest(str(hello.get("token", "")), token):
        raise refuse("the token does not match")
    try:
        features = decode_graph(hello.get("cpu") or b"")
        if not isinstance(features, FeatureSet):
            raise SnapboxError("the CPU features sent are malformed")
        features.check_host(FeatureSet.host())
        Container.check_id(cid)
        if os.path.exists(os.path.join(root, cid)):
            raise SnapboxError(f'container "{cid}" already exists')
        check_bundle()
    except SnapboxError as e:
        raise refuse(str(e)) from None
    os.makedirs(root, mode=0o711, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".incoming-{cid}-", dir=root)
    rounds = Rounds()
    channel.send(type="ready")
    try:
        while True:
            frame = channel.receive()
            kind, name, size = frame["type"], frame.get("name"), frame.get("size")
            if kind not in ("image", "final") or not isinstance(name, str) or os.sep in name \
                    or name.startswith(".") or (kind == "final" and (not isinstance(size, int) or size < 0)):
                raise refuse(f"unexpected {kind!r} in the stream")
            if kind == "image":
                try:
                    rounds.apply(channel.reader, name)
                except ImageError as e:
                    raise refuse(f"round {name}: {e}") from None
                except OSError as e:
                    raise refuse(f"cannot load round {name} ({e.strerror})") from None
                channel.send(type="stored", name=name)
                continue
            path = os.path.join(work, name)
            try:
                channel.receive_into(path, size)
            except OSError as e:
                raise refuse(f"cannot store the image ({e.strerror})") from None
            try:
                result = start(path, rounds.handoff())
            except SnapboxError as e:
                raise refuse(str(e)) from None
            channel.send(type="started")
            return result
    finally:
        rounds.close()
        shutil.rmtree(work, ignore_errors=True)


class Rounds:
    """The memory a migration's rounds bring, applied to a memory file as each arrives (no
    file of them is kept), for the restored sandbox to take over: its last image then
    brings only the pages written since the last round, and the kernel, and the restore
    reads no chain. Each round must be a pre-dump made after the one before."""

    def __init__(self) -> None:
        from snapbox.memfile import MemoryFile

        self.memfile = MemoryFile()
        self.last: str | None = None  # image id of the last round applied

    def apply(self, stream, name: str) -> None:
        from snapbox.kernel.checkpoint import apply_pre_dump

        r = ImageReader(stream)
        parent = r.meta.get("parent")
        if not r.meta.get("pre_dump"):
            raise ImageError("not a pre-dump")
        if (parent or {}).get("id") != self.last or not isinstance(r.meta.get("image_id"), str):
            raise ImageError("not made after the round before")
        r.read_section("cpuid")
        apply_pre_dump(self.memfile, r, name)
        self.last = r.meta["image_id"]

    def handoff(self) -> tuple[str, str] | None:
        """What Container.create takes as `memory` (None before any round)."""
        if self.last is None:
            return None
        return f"/proc/{os.getpid()}/fd/{self.memfile.fd}", self.last

    def close(self) -> None:
        self.memfile.close()


def print_summary(summary: Summary, as_json: bool, out=sys.stdout) -> None:
    if as_json:
        print(json.dumps(summary.as_dict()), file=out)
        return
    total = sum(r.bytes for r in summary.rounds)
    end = "" if summary.converged else " (the program wrote pages as fast as they were sent: stopped there)"
    print(f"migrated in {summary.total_s:.2f} s: {len(summary.rounds) - 1} rounds running and one paused, "
          f"{total / (1 << 20):.1f} MB sent, frozen {summary.freeze_ms:.0f} ms{end}; written pages found by "
          f"{summary.method}", file=out)
