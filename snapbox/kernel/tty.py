"""Pseudo-terminals: /dev/ptmx, /dev/pts and the line discipline between the two ends
(pty(7), termios(3)).

A Pty is a pair of byte queues and a termios. What the master writes goes through the
line discipline on its way to the slave's reader: input processing (ICRNL, IGNCR, ...),
the characters that send signals (^C, ^\\, ^Z to the foreground process group), canonical
mode's line editing (erase, kill, word erase, EOF, literal next) and echo. What the slave
writes goes through output processing (ONLCR, OCRNL, TAB3, ...) to the master's reader.
The slave can be the controlling terminal of a session: its foreground process group gets
the signals, a background job that reads it (or writes with TOSTOP) is stopped by SIGTTIN
(SIGTTOU), the master's close hangs it up (SIGHUP to the session leader), a session
leader's exit takes it from the session (SIGHUP to the foreground group). All of it is
sentry state, saved in images with the queues, the half-typed line and the termios.
"""

from __future__ import annotations

import errno
import stat
import struct
from dataclasses import dataclass, field

from snapbox.kernel.creds import CAP_SYS_ADMIN, capable
from snapbox.kernel.devices import DeviceFile, DeviceNode, makedev
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import (
    O_NOCTTY, O_NONBLOCK, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLPRI, POLLRDNORM, POLLWRNORM,
)
from snapbox.kernel.signals import SIG_IGN, SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU, SIGWINCH, sigbit
from snapbox.kernel.vfs import Dir, now_ns
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

PTY_MASTER_MAJOR, PTY_SLAVE_MAJOR = 5, 136
PTMX = (5, 2)
TTY_GID = 5  # devpts as container runtimes mount it: gid=5, mode=0620
SLAVE_MODE = 0o620
MAX_PTYS = 4096  # /proc/sys/kernel/pty/max's default
INPUT_MAX = 4096  # N_TTY_BUF_SIZE: the line discipline's buffer; a canonical line is at most 4095
PENDING_MAX = 65536  # what the master may write ahead of the line discipline
OUTPUT_MAX = 65536  # what the slave may write ahead of the master's reader

# termios flags (asm-generic/termbits.h)
IGNBRK, BRKINT, IGNPAR, PARMRK, INPCK, ISTRIP, INLCR, IGNCR, ICRNL, IUCLC, IXON, IXANY = (
    0o1, 0o2, 0o4, 0o10, 0o20, 0o40, 0o100, 0o200, 0o400, 0o1000, 0o2000, 0o4000)
IUTF8 = 0o40000
OPOST, OLCUC, ONLCR, OCRNL, ONOCR, ONLRET, TABDLY, TAB3 = 0o1, 0o2, 0o4, 0o10, 0o20, 0o40, 0o14000, 0o14000
B38400, CS8, CREAD = 0o17, 0o60, 0o200
ISIG, ICANON, ECHO, ECHOE, ECHOK, ECHONL, NOFLSH, TOSTOP, ECHOCTL, ECHOPRT, ECHOKE, IEXTEN = (
    0o1, 0o2, 0o10, 0o20, 0o40, 0o100, 0o200, 0o400, 0o1000, 0o2000, 0o4000, 0o100000)
EXTPROC = 0o200000
(VINTR, VQUIT, VERASE, VKILL, VEOF, VTIME, VMIN, VSWTC, VSTART, VSTOP, VSUSP, VEOL, VREPRINT,
 VDISCARD, VWERASE, VLNEXT, VEOL2) = range(17)
NCCS = 19
DISABLED = 0  # _POSIX_VDISABLE
# The slave's termios as Linux makes it (tty_std_termios, with the pty driver's c_cflag).
STD_IFLAG, STD_OFLAG, STD_CFLAG = ICRNL | IXON, OPOST | ONLCR, B38400 | CS8 | CREAD
STD_LFLAG = ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN
STD_CC = bytes([3, 0x1C, 0x7F, 0x15, 4, 0, 1, 0, 0x11, 0x13, 0x1A, 0, 0x12, 0x0F, 0x17, 0x16, 0, 0, 0])
SPEED = 38400

_TERMIOS = struct.Struct("<IIIIB19s")  # the kernel's struct termios (36 bytes)
_TERMIOS2 = struct.Struct("<IIIIB19sII")  # struct termios2: and the two speeds

# ioctl requests (asm-generic/ioctls.h)
TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TCSBRK, TCXONC, TCFLSH = 0x5409, 0x540A, 0x540B
TIOCEXCL, TIOCNXCL, TIOCSCTTY, TIOCGPGRP, TIOCSPGRP, TIOCOUTQ, TIOCSTI = (
    0x540C, 0x540D, 0x540E, 0x540F, 0x5410, 0x5411, 0x5412)
TIOCGWINSZ, TIOCSWINSZ, FIONREAD, TIOCPKT, TIOCNOTTY, TIOCSETD, TIOCGETD = (
    0x5413, 0x5414, 0x541B, 0x5420, 0x5422, 0x5423, 0x5424)
TCSBRKP, TIOCGSID = 0x5425, 0x5429
TCGETS2, TCSETS2, TCSETSW2, TCSETSF2 = 0x802C542A, 0x402C542B, 0x402C542C, 0x402C542D
TIOCGPTN, TIOCSPTLCK, TIOCGEXCL, TIOCGPTLCK, TIOCGPTPEER = 0x80045430, 0x40045431, 0x80045440, 0x80045439, 0x5441
TIOCGPKT = 0x80045438
TCOOFF, TCOON, TCIOFF, TCION = 0, 1, 2, 3
# Packet mode's status bits (TIOCPKT_*): what the master reads alone, as one byte.
PKT_FLUSHREAD, PKT_FLUSHWRITE, PKT_STOP, PKT_START, PKT_NOSTOP, PKT_DOSTOP, PKT_IOCTL = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40)
TCIFLUSH, TCOFLUSH, TCIOFLUSH = 0, 1, 2
N_TTY = 0


@savable
@dataclass(eq=False)
class PtsNode(DeviceNode):
    """/dev/pts/N: the slave of pty N."""

    pty: Pty | None = None


@savable
@dataclass(eq=False)
class Pty:
    """One pseudo-terminal: its termios, window size, queues and session."""

    index: int = 0
    locked: bool = True  # TIOCSPTLCK: the slave cannot be opened until unlockpt(3)
    iflag: int = STD_IFLAG
    oflag: int = STD_OFLAG
    cflag: int = STD_CFLAG
    lflag: int = STD_LFLAG
    line: int = N_TTY
    cc: bytes = STD_CC
    winsize: bytes = bytes(8)  # struct winsize
    pending: bytearray = field(default_factory=bytearray)  # written by the master, not yet processed
    inq: bytearray = field(default_factory=bytearray)  # processed input the slave may read
    ends: list = field(default_factory=list)  # canonical mode: offsets in inq where lines end
    edit: bytearray = field(default_factory=bytearray)  # canonical mode: the line being typed
    lnext: bool = False  # the previous character was VLNEXT: take the next one literally
    outq: bytearray = field(default_factory=bytearray)  # output and echo for the master to read
    column: int = 0  # the output column, for tabs and erasing
    stopped: bool = False  # output stopped (VSTOP with IXON, or tcflow TCOOFF)
    last_input: int = 0  # sandbox-monotonic ns of the last input (VMIN with VTIME)
    vtime: dict = field(default_factory=dict)  # tid -> deadline of its read with VMIN 0, VTIME > 0
    session: int = 0  # the session it is the controlling terminal of, 0 if none
    pgrp: int = 0  # its foreground process group
    master_open: bool = True
    slave_opens: int = 0  # open slave file descriptions
    slave_opened: bool = False  # the slave has been opened at least once
    exclusive: bool = False  # TIOCEXCL
    packet: bool = False  # TIOCPKT: the master reads a status byte before each read's data
    pktstatus: int = 0  # PKT_* changes its reader has yet to hear of (packet mode)
    node: PtsNode | None = None  # /dev/pts/N, gone once the master is closed
    readable: WaitQueue = field(default_factory=WaitQueue)  # the slave's readers
    writable: WaitQueue = field(default_factory=WaitQueue)  # the slave's writers
    master_readable: WaitQueue = field(default_factory=WaitQueue)
    master_writable: WaitQueue = field(default_factory=WaitQueue)

    def char(self, index: int) -> int:
        return self.cc[index]

    def is_char(self, c: int, index: int) -> bool:
        return self.cc[index] != DISABLED and c == self.cc[index]

    # --- termios

    def termios(self) -> bytes:
        return _TERMIOS.pack(self.iflag, self.oflag, self.cflag, self.lflag, self.line, self.cc)

    def set_termios(self, data: bytes) -> None:
        iflag, oflag, cflag, lflag, line, cc = _TERMIOS.unpack(data[:_TERMIOS.size])
        old, was_lflag = self.termios(), self.lflag
        was_canon = self.lflag & ICANON
        self.iflag, self.oflag, self.cflag, self.lflag, self.line, self.cc = iflag, oflag, cflag, lflag, line, cc
        if was_canon and not lflag & ICANON:
            # The line being typed becomes input to read (n_tty_set_termios).
            self.inq += self.edit
            self.edit.clear()
            self.ends.clear()
        elif not was_canon and lflag & ICANON and self.inq:
            self.ends = [len(self.inq)]
        if not iflag & IXON:
            self.start()
        old_flow, new_flow = self._flow_control(old), self._flow_control(self.termios())
        if old_flow != new_flow:
            self.packet_status(PKT_DOSTOP if new_flow else PKT_NOSTOP, PKT_DOSTOP | PKT_NOSTOP)
        if (was_lflag | lflag) & EXTPROC:
            self.packet_status(PKT_IOCTL)
        self.receive_pending()
        self.wake_all()

    @staticmethod
    def _flow_control(termios: bytes) -> bool:
        """Whether ^S and ^Q stop and start output (what packet mode's DOSTOP reports)."""
        iflag, _, _, _, _, cc = _TERMIOS.unpack(termios)
        return bool(iflag & IXON) and cc[VSTOP] == 0o23 and cc[VSTART] == 0o21

    def packet_status(self, add: int, clear: int = 0) -> None:
        """A status change the master's reader hears of, in packet mode."""
        if self.packet:
            self.pktstatus = (self.pktstatus & ~clear) | add
            self.master_readable.notify()

    def stop(self) -> None:
        """Output stops (^S, tcflow TCOOFF)."""
        if not self.stopped:
            self.stopped = True
            self.packet_status(PKT_STOP, PKT_START)

    def start(self) -> None:
        if self.stopped:
            self.stopped = False
            self.packet_status(PKT_START, PKT_STOP)
            self.writable.notify()

    # --- input: master -> line discipline -> slave

    def room(self) -> int:
        """Characters the line discipline takes now. A canonical line with no end yet
        always takes more (beyond its limit they are dropped), so that its end can come."""
        room = INPUT_MAX - 1 - len(self.inq) - len(self.edit)
        if room <= 0 and self.lflag & ICANON and not self.ends:
            return 1
        return room

    def receive_pending(self, k=None) -> None:
        """Run what the master wrote through the line discipline while there is room."""
        if not self.pending:
            return
        if not self.lflag & (ICANON | ISIG | ECHO | IEXTEN) and not self.iflag & (ISTRIP | IGNCR | ICRNL | INLCR | IXON) \
                and not self.lnext:
            n = max(0, min(self.room(), len(self.pending)))  # raw: no character is special
            self.inq += self.pending[:n]
            del self.pending[:n]
            self.readable.notify()
        else:
            i = 0
            while i < len(self.pending) and self.room() > 0:
                c = self.pending[i]
                i += 1
                self.receive(c, k)
            del self.pending[:i]
        self.master_writable.notify()

    def receive(self, c: int, k) -> None:
        """One input character (n_tty_receive_char and its special cases)."""
        lflag, iflag = self.lflag, self.iflag
        if iflag & ISTRIP:
            c &= 0x7F
        if self.lnext:
            self.lnext = False
            self._store(c, literal=True)
            return
        if c == 13:
            if iflag & IGNCR:
                return
            if iflag & ICRNL:
                c = 10
        elif c == 10 and iflag & INLCR:
            c = 13
        if iflag & IXON:
            if self.is_char(c, VSTOP):
                self.stop()
                return
            if self.is_char(c, VSTART):
                self.start()
                return
            if self.stopped and iflag & IXANY:
                self.start()
        if lflag & ISIG:
            for index, sig in ((VINTR, SIGINT), (VQUIT, SIGQUIT), (VSUSP, SIGTSTP)):
                if self.is_char(c, index):
                    if not lflag & NOFLSH:
                        self.flush_input(pending=False)
                        self.outq.clear()
                        self.packet_status(PKT_FLUSHREAD | PKT_FLUSHWRITE)
                    if iflag & IXON:
                        self.start()
                    if lflag & ECHO:
                        self._echo_char(c)
                    self.signal_group(k, sig)
                    return
        if lflag & ICANON:
            if lflag & IEXTEN and self.is_char(c, VLNEXT):
                self.lnext = True
                if lflag & ECHO and lflag & ECHOCTL:
                    self._emit(b"^\b")
                return
            if self.is_char(c, VERASE) or self.is_char(c, VKILL) or (lflag & IEXTEN and self.is_char(c, VWERASE)):
                self._erase(c)
                return
            if lflag & IEXTEN and self.is_char(c, VREPRINT):
                if lflag & ECHO:
                    self._echo_char(c)
                    self._output(b"\n")
                    self._output(bytes(self.edit))
                return
            if self.is_char(c, VEOF):
                self._end_line()
                return
            if c == 10 or self.is_char(c, VEOL) or (lflag & IEXTEN and self.is_char(c, VEOL2)):
                if c == 10 and lflag & (ECHO | ECHONL):
                    self._output(b"\n")
                elif c != 10 and lflag & ECHO:
                    self._echo_char(c)
                self.edit.append(c)
                self._end_line()
                return
        self._store(c, literal=False)

    def _store(self, c: int, literal: bool) -> None:
        lflag = self.lflag
        if lflag & ICANON:
            if len(self.edit) >= INPUT_MAX - 1:
                return  # a full line takes nothing more but its end
            if lflag & ECHO:
                self._echo_char(c)
            self.edit.append(c)
        else:
            if lflag & ECHO:
                self._echo_char(c)
            self.inq.append(c)
            self.readable.notify()

    def _end_line(self) -> None:
        self.inq += self.edit
        self.edit.clear()
        self.ends.append(len(self.inq))
        self.readable.notify()

    def _erase(self, c: int) -> None:
        """VERASE, VWERASE, VKILL: take characters back from the line being typed."""
        lflag = self.lflag
        kill = self.is_char(c, VKILL)
        if not self.edit:
            return
        if kill and not (lflag & ECHO and lflag & ECHOK and lflag & ECHOKE and lflag & ECHOE):
            self.edit.clear()
            if lflag & ECHO:
                self._echo_char(c)
                if lflag & ECHOK:
                    self._output(b"\n")
            return
        word = not kill and self.is_char(c, VWERASE)
        seen_word = False
        while self.edit:
            last = self.edit[-1]
            if word:
                is_space = last in b" \t"
                if is_space and seen_word:
                    break
                seen_word = seen_word or not is_space
            del self.edit[-1]
            if lflag & ECHO:
                if lflag & ECHOE:
                    width = 2 if lflag & ECHOCTL and _is_cntrl(last) and last != 9 else 1
                    self._output(b"\b \b" * width)
                else:
                    self._echo_char(c)
            if not kill and not word:
                break

    def _echo_char(self, c: int) -> None:
        if self.lflag & ECHOCTL and _is_cntrl(c) and c != 9:
            self._output(bytes([ord("^"), c ^ 0x40]))
        else:
            self._output(bytes([c]))

    def _emit(self, data: bytes) -> None:
        """Bytes straight to the master's reader (echo control sequences)."""
        self.outq += data
        self.master_readable.notify()

    def flush_input(self, pending: bool = True) -> None:
        """Discard unread input: the line discipline's, and (`pending`) what the master
        wrote ahead of it, as TCFLSH does (a ^C leaves that)."""
        self.inq.clear()
        self.ends.clear()
        self.edit.clear()
        if pending:
            self.pending.clear()
        self.master_writable.notify()

    # --- output: slave -> output processing -> master

    def _output(self, data: bytes) -> int:
        """Append `data` to the master's queue after output processing (OPOST); returns the
        bytes of `data` taken (all, unless the queue is full)."""
        oflag = self.oflag
        if not oflag & OPOST:
            n = min(len(data), max(0, OUTPUT_MAX - len(self.outq)))
            self.outq += data[:n]
            if n:
                self.master_readable.notify()
            return n
        out = bytearray()
        taken = 0
        for c in data:
            if len(self.outq) + len(out) >= OUTPUT_MAX:
                break
            taken += 1
            if c == 10:
                if oflag & ONLRET:
                    self.column = 0
                if oflag & ONLCR:
                    out += b"\r\n"
                    self.column = 0
                    continue
            elif c == 13:
                if oflag & ONOCR and self.column == 0:
                    continue
                if oflag & OCRNL:
                    c = 10
                    if oflag & ONLRET:
                        self.column = 0
                else:
                    self.column = 0
            elif c == 9:
                spaces = 8 - (self.column & 7)
                self.column += spaces
                if oflag & TABDLY == TAB3:
                    out += b" " * spaces
                    continue
            elif c == 8:
                if self.column > 0:
                    self.column -= 1
            else:
                if oflag & OLCUC and 97 <= c <= 122:
                    c -= 32
                if not _is_cntrl(c) and not (self.iflag & IUTF8 and c & 0xC0 == 0x80):
                    self.column += 1
            out.append(c)
        self.outq += out
        if out:
            self.master_readable.notify()
        return taken

    # --- sessions and signals

    def signal_group(self, k, sig: int) -> None:
        """`sig` to the foreground process group (a ^C, a resize)."""
        if k is None or not self.pgrp:
            return
        for tg in group_members(k, self.pgrp):
            k.send_signal(tg, sig)

    def hang_up(self, k) -> None:
        """The master is gone: the session leader gets SIGHUP and SIGCONT and the session
        loses its terminal; the slave reads end of file and cannot be written."""
        self.master_open = False
        if self.session:
            leader = k.tasks.pidns.groups.get(self.session)
            if leader is not None and leader.exit_status is None:
                k.send_signal(leader, SIGHUP)
                k.send_signal(leader, SIGCONT)
        self.session = self.pgrp = 0
        self.wake_all()

    def wake_all(self) -> None:
        for q in (self.readable, self.writable, self.master_readable, self.master_writable):
            q.notify()

    # --- the slave's side

    def canonical_ready(self) -> int:
        """Bytes of whole lines ready to read in canonical mode."""
        return self.ends[-1] if self.ends else 0

    def slave_read(self, t, count: int, nonblock: bool) -> bytes:
        if not self.master_open:
            return b""
        if self.lflag & ICANON:
            if not self.ends:
                if nonblock:
                    raise SyscallError(errno.EAGAIN)
                raise WouldBlock(self.readable)
            n = min(count, self.ends[0])
            data = bytes(self.inq[:n])
            del self.inq[:n]
            self.ends = [e - n for e in self.ends]
            if self.ends[0] == 0:
                self.ends.pop(0)
            self.receive_pending(t.kernel)
            return data
        # Non-canonical: VMIN and VTIME (termios(3)) say when a read returns.
        vmin, vtime = self.cc[VMIN], self.cc[VTIME]
        now = t.kernel.timekeeper.monotonic_ns()
        avail = len(self.inq)
        deadline = None
        if vmin == 0 and vtime == 0:
            ready = True
        elif vmin == 0:  # VTIME from the call: any byte, or nothing once it is over
            deadline = self.vtime.setdefault(t.tid, now + vtime * 100_000_000)
            ready = avail > 0 or now >= deadline
        elif vtime == 0:
            ready = avail >= min(vmin, count)
        else:  # VTIME between bytes, once the first has come
            deadline = self.last_input + vtime * 100_000_000 if avail else None
            ready = avail >= min(vmin, count) or (avail > 0 and now >= deadline)
        if not ready:
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.readable, deadline=deadline)
        self.vtime.pop(t.tid, None)
        data = bytes(self.inq[:count])
        del self.inq[:count]
        self.receive_pending(t.kernel)
        return data

    def slave_write(self, t, data: bytes, nonblock: bool) -> int:
        if not self.master_open:
            raise SyscallError(errno.EIO)
        if self.stopped or len(self.outq) >= OUTPUT_MAX:
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.writable)
        return self._output(data)

    def slave_ready(self) -> int:
        if not self.master_open:
            return POLLIN | POLLOUT | POLLERR | POLLHUP | POLLRDNORM | POLLWRNORM
        if self.lflag & ICANON:
            readable = bool(self.ends)
        else:
            vmin, vtime = self.cc[VMIN], self.cc[VTIME]
            readable = len(self.inq) >= (vmin if vmin and not vtime else 1)
        mask = POLLIN | POLLRDNORM if readable else 0
        if not self.stopped and len(self.outq) < OUTPUT_MAX:
            mask |= POLLOUT | POLLWRNORM
        return mask

    # --- the master's side

    def master_read(self, count: int, nonblock: bool) -> bytes:
        """What the slave wrote; in packet mode, after a status byte: TIOCPKT_DATA (0),
        or a status change alone."""
        if self.packet and self.pktstatus:
            status, self.pktstatus = self.pktstatus, 0
            return bytes([status])
        if not self.outq:
            if self.slave_opened and not self.slave_opens:
                raise SyscallError(errno.EIO)
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.master_readable)
        n = count - 1 if self.packet else count
        data = bytes(self.outq[:n])
        del self.outq[:n]
        self.writable.notify()
        return b"\0" + data if self.packet else data

    def master_write(self, t, data: bytes, nonblock: bool) -> int:
        room = PENDING_MAX - len(self.pending)
        if room <= 0:
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.master_writable)
        n = min(room, len(data))
        self.pending += data[:n]
        self.last_input = t.kernel.timekeeper.monotonic_ns()
        self.receive_pending(t.kernel)
        return n

    def master_ready(self) -> int:
        mask = POLLIN | POLLRDNORM if self.outq else 0
        if self.packet and self.pktstatus:
            mask |= POLLIN | POLLPRI | POLLRDNORM
        if len(self.pending) < PENDING_MAX:
            mask |= POLLOUT | POLLWRNORM
        if self.slave_opened and not self.slave_opens:
            mask |= POLLHUP
        return mask


def _is_cntrl(c: int) -> bool:
    return c < 32 or c == 127


def group_members(k, pgrp: int) -> list:
    return [tg for tg in k.tasks.pidns.groups.values() if tg.pgid == pgrp and tg.exit_status is None]


def orphaned(k, pgrp: int) -> bool:
    """A process group none of whose members has a parent in another group of its session
    (credentials(7)): job control signals would stop it for good."""
    for tg in group_members(k, pgrp):
        parent = tg.parent
        if parent is not None and parent.exit_status is None and parent.pgid != pgrp and parent.sid == tg.sid:
            return False
    return True


def controlling_tty(k, tg) -> Pty | None:
    """The pty that is the controlling terminal of `tg`'s session, if one is."""
    for pty in k.ptys.values():
        if pty.session and pty.session == tg.sid:
            return pty
    return None


def job_control(t, pty: Pty, sig: int) -> None:
    """A read (SIGTTIN) or a write or a change of settings (SIGTTOU) of a controlling
    terminal by a process outside its foreground group: the group is sent `sig` and the
    call made again once it runs (or EIO, for a group that could never be continued, or
    for a read the signal cannot stop); a process ignoring or blocking SIGTTOU may write."""
    tg = t.tg
    if not pty.session or tg.sid != pty.session or not pty.pgrp or tg.pgid == pty.pgrp:
        return
    k = t.kernel
    act = tg.sigaction(sig)
    if act.handler == SIG_IGN or t.signal_mask & sigbit(sig):
        if sig == SIGTTIN:
            raise SyscallError(errno.EIO)
        return
    if orphaned(k, tg.pgid):
        raise SyscallError(errno.EIO)
    for member in group_members(k, tg.pgid):
        k.send_signal(member, sig)
    raise WouldBlock(pty.readable if sig == SIGTTIN else pty.writable)


@savable
@dataclass(eq=False)
class PtyMaster(DeviceFile):
    """The master side of a pty, from /dev/ptmx."""

    stream = True
    pty: Pty | None = None
    kernel: object = None  # the Kernel, to signal the session at hangup

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        return self.pty.master_read(count, bool(self.flags & O_NONBLOCK))

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        return self.pty.master_write(t, data, bool(self.flags & O_NONBLOCK))

    def seek(self, offset: int, whence: int) -> int:
        raise SyscallError(errno.ESPIPE)

    def ready(self) -> int:
        return self.pty.master_ready()

    def queues(self, t) -> tuple:
        return (self.pty.master_readable, self.pty.master_writable)

    def ioctl(self, t, request: int, arg: int) -> int:
        pty = self.pty
        if request == TIOCGPTN:
            t.mm.write(arg, struct.pack("<I", pty.index))
            return 0
        if request == TIOCSPTLCK:
            (value,) = struct.unpack("<i", t.mm.read(arg, 4))
            pty.locked = value != 0
            return 0
        if request == TIOCGPTLCK:
            t.mm.write(arg, struct.pack("<i", int(pty.locked)))
            return 0
        if request == TIOCGPTPEER:
            if pty.node is None:
                raise SyscallError(errno.EIO)
            f = open_slave(t, pty.node, arg & ~0o2000000)
            return t.tg.fds.install(f, cloexec=bool(arg & 0o2000000))
        if request in (FIONREAD, TIOCOUTQ):
            value = len(pty.outq) if request == FIONREAD else len(pty.pending)
            t.mm.write(arg, struct.pack("<i", value))
            return 0
        if request == TCFLSH:
            if arg not in (TCIFLUSH, TCOFLUSH, TCIOFLUSH):
                raise SyscallError(errno.EINVAL)
            if arg in (TCIFLUSH, TCIOFLUSH):  # the master's input is the slave's output
                pty.outq.clear()
                pty.writable.notify()
            if arg in (TCOFLUSH, TCIOFLUSH):
                pty.flush_input()
            return 0
        if request == TIOCPKT:
            (on,) = struct.unpack("<i", t.mm.read(arg, 4))
            if on and not pty.packet:
                pty.pktstatus = 0
            pty.packet = bool(on)
            return 0
        if request == TIOCGPKT:
            t.mm.write(arg, struct.pack("<i", int(pty.packet)))
            return 0
        if request in (TIOCSCTTY, TIOCNOTTY, TIOCSTI, TIOCEXCL, TIOCNXCL, TIOCGEXCL):
            raise SyscallError(errno.ENOTTY)
        return tty_ioctl(t, pty, request, arg, master=True)

    def release(self) -> None:
        pty = self.pty
        kernel = self.kernel
        pts_dir(kernel).entries.pop(str(pty.index), None)  # /dev/pts/N goes with its master
        pty.node = None
        pty.hang_up(kernel)
        if not pty.slave_opens:
            kernel.ptys.pop(pty.index, None)

    def describe(self) -> str:
        return "/dev/ptmx"


@savable
@dataclass(eq=False)
class PtySlave(DeviceFile):
    """The slave side of a pty: /dev/pts/N, or /dev/tty of its session."""

    stream = True
    pty: Pty | None = None
    kernel: object = None

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        pty = self.pty
        if pty.master_open:
            job_control(t, pty, SIGTTIN)
        return pty.slave_read(t, count, bool(self.flags & O_NONBLOCK))

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        pty = self.pty
        if pty.master_open and pty.lflag & TOSTOP:
            job_control(t, pty, SIGTTOU)
        return pty.slave_write(t, data, bool(self.flags & O_NONBLOCK))

    def seek(self, offset: int, whence: int) -> int:
        raise SyscallError(errno.ESPIPE)

    def ready(self) -> int:
        return self.pty.slave_ready()

    def queues(self, t) -> tuple:
        return (self.pty.readable, self.pty.writable)

    def ioctl(self, t, request: int, arg: int) -> int:
        pty = self.pty
        if not pty.master_open:
            raise SyscallError(errno.ENOTTY if request == TIOCSPGRP else errno.EIO)
        if request == TIOCGPTN or request in (TIOCSPTLCK, TIOCGPTLCK, TIOCGPTPEER, TIOCPKT, TIOCGPKT):
            raise SyscallError(errno.ENOTTY)
        if request in (FIONREAD, TIOCOUTQ):
            if request == TIOCOUTQ:
                value = len(pty.outq)
            else:
                value = pty.canonical_ready() if pty.lflag & ICANON else len(pty.inq)
            t.mm.write(arg, struct.pack("<i", value))
            return 0
        if request == TCFLSH:
            if arg not in (TCIFLUSH, TCOFLUSH, TCIOFLUSH):
                raise SyscallError(errno.EINVAL)
            if arg in (TCIFLUSH, TCIOFLUSH):
                pty.flush_input()
                pty.packet_status(PKT_FLUSHREAD)
            if arg in (TCOFLUSH, TCIOFLUSH):
                pty.outq.clear()
                pty.writable.notify()
                pty.packet_status(PKT_FLUSHWRITE)
            return 0
        if request == TIOCSCTTY:
            return set_controlling(t, pty, steal=arg == 1)
        if request == TIOCNOTTY:
            if pty.session != t.tg.sid or not pty.session:
                raise SyscallError(errno.ENOTTY)
            if t.tg.tgid == t.tg.sid:
                leave_session(t.kernel, pty)
            return 0
        if request == TIOCSTI:
            if not capable(t.tg, CAP_SYS_ADMIN):
                raise SyscallError(errno.EPERM)
            pty.pending += t.mm.read(arg, 1)
            pty.receive_pending(t.kernel)
            return 0
        if request in (TIOCEXCL, TIOCNXCL):
            pty.exclusive = request == TIOCEXCL
            return 0
        if request == TIOCGEXCL:
            t.mm.write(arg, struct.pack("<i", int(pty.exclusive)))
            return 0
        return tty_ioctl(t, pty, request, arg, master=False)

    def release(self) -> None:
        pty = self.pty
        pty.slave_opens -= 1
        pty.master_readable.notify()
        if not pty.slave_opens and not pty.master_open:
            self.kernel.ptys.pop(pty.index, None)

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"/dev/{self.node.name}"


def tty_ioctl(t, pty: Pty, request: int, arg: int, master: bool) -> int:
    """The requests both sides take (the master's termios is its slave's, as on Linux)."""
    k = t.kernel
    own = not master and pty.session == t.tg.sid and pty.session != 0
    if request in (TCGETS, TCGETS2):
        data = pty.termios() if request == TCGETS else _TERMIOS2.pack(
            pty.iflag, pty.oflag, pty.cflag, pty.lflag, pty.line, pty.cc, SPEED, SPEED)
        t.mm.write(arg, data)
        return 0
    if request in (TCSETS, TCSETSW, TCSETSF, TCSETS2, TCSETSW2, TCSETSF2):
        data = t.mm.read(arg, _TERMIOS.size)
        if not master:
            job_control_change(t, pty)
        if request in (TCSETSF, TCSETSF2):
            pty.flush_input()
        pty.set_termios(data)
        return 0
    if request == TIOCGWINSZ:
        t.mm.write(arg, pty.winsize)
        return 0
    if request == TIOCSWINSZ:
        data = t.mm.read(arg, 8)
        if data != pty.winsize:
            pty.winsize = data
            pty.signal_group(k, SIGWINCH)
        return 0
    if request in (TCSBRK, TCSBRKP):
        return 0  # tcdrain and breaks: a pty sends nothing anywhere
    if request == TCXONC:
        if arg not in (TCOOFF, TCOON, TCIOFF, TCION):
            raise SyscallError(errno.EINVAL)
        if master and arg in (TCOOFF, TCOON):  # the master's own flow: packet mode hears nothing of it
            pty.stopped = arg == TCOOFF
            pty.writable.notify()
        elif arg == TCOOFF:
            pty.stop()
        elif arg == TCOON:
            pty.start()
        return 0
    if request == TIOCGETD:
        t.mm.write(arg, struct.pack("<i", pty.line))
        return 0
    if request == TIOCSETD:
        (disc,) = struct.unpack("<i", t.mm.read(arg, 4))
        if disc != N_TTY:
            raise SyscallError(errno.EINVAL)  # only the terminal line discipline
        return 0
    if request == TIOCGPGRP:
        if not master and not own:
            raise SyscallError(errno.ENOTTY)
        t.mm.write(arg, struct.pack("<i", pty.pgrp))
        return 0
    if request == TIOCGSID:
        if (not master and not own) or not pty.session:
            raise SyscallError(errno.ENOTTY)
        t.mm.write(arg, struct.pack("<i", pty.session))
        return 0
    if request == TIOCSPGRP:
        if not master and not own:
            raise SyscallError(errno.ENOTTY)
        if not master:
            job_control_change(t, pty)
        (pgrp,) = struct.unpack("<i", t.mm.read(arg, 4))
        if pgrp < 0:
            raise SyscallError(errno.EINVAL)
        members = group_members(k, pgrp)
        if not members:
            raise SyscallError(errno.ESRCH)
        if any(tg.sid != pty.session for tg in members):
            raise SyscallError(errno.EPERM)
        pty.pgrp = pgrp
        return 0
    raise SyscallError(errno.ENOTTY)


def job_control_change(t, pty: Pty) -> None:
    """tcsetattr, tcsetpgrp and the like from a background process: SIGTTOU, as a write
    with TOSTOP (a process ignoring or blocking SIGTTOU may)."""
    job_control(t, pty, SIGTTOU)


def set_controlling(t, pty: Pty, steal: bool) -> int:
    """TIOCSCTTY: make the pty the caller's session's controlling terminal."""
    tg = t.tg
    if pty.session == tg.sid:
        return 0
    if tg.tgid != tg.sid or controlling_tty(t.kernel, tg) is not None:
        raise SyscallError(errno.EPERM)
    if pty.session:
        if not (steal and capable(tg, CAP_SYS_ADMIN)):
            raise SyscallError(errno.EPERM)
        leave_session(t.kernel, pty, signal_group=False)
    pty.session, pty.pgrp = tg.sid, tg.pgid
    return 0


def leave_session(k, pty: Pty, signal_group: bool = True) -> None:
    """disassociate_ctty(): the session leader gives the terminal up (TIOCNOTTY, exit);
    its foreground group gets SIGHUP and SIGCONT."""
    if signal_group and pty.pgrp:
        for tg in group_members(k, pty.pgrp):
            k.send_signal(tg, SIGHUP)
            k.send_signal(tg, SIGCONT)
    pty.session = pty.pgrp = 0


def session_leader_exited(k, tg) -> None:
    pty = controlling_tty(k, tg)
    if pty is not None and tg.tgid == tg.sid:
        leave_session(k, pty)


def open_ptmx(t, flags: int) -> PtyMaster:
    """open(/dev/ptmx): a new pty, locked, its slave in /dev/pts."""
    k = t.kernel
    index = next((i for i in range(MAX_PTYS) if i not in k.ptys), None)
    if index is None:
        raise SyscallError(errno.ENOSPC)
    pts = pts_dir(k)
    now = now_ns()
    pty = Pty(index=index)
    node = PtsNode(ino=k.fs.new_ino(), mode=stat.S_IFCHR | SLAVE_MODE, uid=t.tg.fsuid, gid=TTY_GID,
                   atime=now, mtime=now, ctime=now, name=f"pts/{index}",
                   rdev=makedev(PTY_SLAVE_MAJOR, index), pty=pty)
    pty.node = node
    pts.entries[str(index)] = node
    k.ptys[index] = pty
    return PtyMaster(flags=flags, node=ptmx_node(k), pty=pty, kernel=k)


def open_slave(t, node: PtsNode, flags: int) -> PtySlave:
    """open(/dev/pts/N): the slave, once unlocked; a session leader without a controlling
    terminal that opens it without O_NOCTTY makes it its own."""
    pty = node.pty
    if pty is None or pty.locked or not pty.master_open:
        raise SyscallError(errno.EIO)
    if pty.exclusive and not capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EBUSY)
    tg = t.tg
    if not flags & O_NOCTTY and tg.tgid == tg.sid and not pty.session and controlling_tty(t.kernel, tg) is None:
        pty.session, pty.pgrp = tg.sid, tg.pgid
    pty.slave_opens += 1
    pty.slave_opened = True
    return PtySlave(flags=flags, node=node, pty=pty, kernel=t.kernel)


def open_tty(t, node: DeviceNode, flags: int) -> PtySlave | None:
    """open(/dev/tty): the caller's controlling pty, if it has one."""
    pty = controlling_tty(t.kernel, t.tg)
    if pty is None:
        return None
    pty.slave_opens += 1
    return PtySlave(flags=flags, node=node, pty=pty, kernel=t.kernel)


def pts_dir(k) -> Dir:
    dev = k.fs.root.entries.get("dev")
    return dev.entries["pts"]


def ptmx_node(k) -> DeviceNode:
    return k.fs.root.entries["dev"].entries["ptmx"]

