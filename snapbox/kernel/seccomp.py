"""Seccomp filters that programs install (seccomp(2), prctl PR_SET_SECCOMP).

A filter is a classic BPF program over struct seccomp_data (nr, arch, instruction_pointer,
args[6]). snapbox checks it as Linux checks it (bpf_check_classic, then seccomp's own
narrower set of instructions and loads) and runs it in the sentry on every syscall the
task makes, before its handler: the stubs' own host filter is the sentry's business and
is never changed by the program. Filters form a chain, newest first, shared by the tasks
that inherited it (fork, clone, execve keep it); the chain's verdict is the most
restrictive of its filters' (the lowest action as a signed number, the newest on a tie).

A chain remembers the verdict of a syscall number whose filters read nothing but nr and
arch (what most allow-lists look at), so those calls cost a dict lookup.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import OpenFile
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import nosave, savable

SECCOMP_MODE_DISABLED, SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 0, 1, 2

RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
ACTION_FULL, RET_DATA = 0xFFFF0000, 0x0000FFFF
KNOWN_ACTIONS = frozenset({RET_KILL_PROCESS, RET_KILL_THREAD, RET_TRAP, RET_ERRNO, RET_USER_NOTIF,
                           RET_TRACE, RET_LOG, RET_ALLOW})
MAX_ERRNO = 4095

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_DATA = struct.Struct("<iIQ6Q")  # struct seccomp_data: 64 bytes
_WORDS = struct.Struct("<16I")
BPF_MAXINSNS = 4096
MAX_INSNS_PER_PATH = 32768  # (1 << 18) / sizeof(struct sock_filter), in converted instructions
PATH_PENALTY = 4  # what each filter installed before adds to a new one's path, beyond its length
BPF_MEMWORDS = 16
INSN = struct.Struct("<HBBI")  # struct sock_filter

# Opcodes (class | size | mode, class | op | source).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, ABS, MEM, LEN, IMM = 0x00, 0x20, 0x60, 0x80, 0x00
K, X, A = 0x00, 0x08, 0x10
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
TAX, TXA = 0x00, 0x80

LD_ABS, LD_IMM, LDX_IMM, LD_MEM, LDX_MEM = LD | W | ABS, LD | IMM, LDX | IMM, LD | MEM, LDX | MEM
JUMPS = frozenset(JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X))
# What classic BPF allows anywhere (chk_code_allowed), and the narrower set a seccomp
# filter may use once its LEN loads are turned into loads of sizeof(seccomp_data).
_ALU_OPS = (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, XOR)
SECCOMP_CODES = frozenset(
    {ALU | op | src for op in _ALU_OPS for src in (K, X)} | {ALU | NEG}
    | {LD_ABS, LD_IMM, LDX_IMM, LD_MEM, LDX_MEM, ST, STX, MISC | TAX, MISC | TXA, RET | K, RET | A, JMP | JA} | JUMPS)
CLASSIC_CODES = SECCOMP_CODES | {ALU | MOD | K, ALU | MOD | X, LD | W | LEN, LDX | W | LEN, LDX | 0x10 | 0xA0,
                                 *(LD | size | mode for size in (0x00, 0x08, 0x10) for mode in (ABS, 0x40))}
_LEN_LOADS = {LD | W | LEN: LD_IMM, LDX | W | LEN: LDX_IMM}


@savable
@dataclass(eq=False)
class SeccompFilter:
    """One installed filter and, through `prev`, the ones installed before it."""

    insns: tuple  # (code, jt, jf, k) per instruction, as checked
    prev: SeccompFilter | None = None
    log: bool = False  # SECCOMP_FILTER_FLAG_LOG: its actions other than ALLOW are logged
    # What the chain weighs against MAX_INSNS_PER_PATH for a filter installed after it: each
    # filter's converted_length plus PATH_PENALTY.
    path_length: int = 0
    listener: SeccompListener | None = None  # SECCOMP_FILTER_FLAG_NEW_LISTENER's, for its USER_NOTIF
    verdicts: dict = nosave(dict)  # nr -> the chain's verdict, for numbers it decides by nr and arch alone

    def count(self) -> int:
        """Filters in the chain (/proc/PID/status's Seccomp_filters)."""
        n, f = 0, self
        while f is not None:
            n, f = n + 1, f.prev
        return n

    def descends_from(self, other: SeccompFilter | None) -> bool:
        """`other` is this chain or an older part of it (TSYNC may replace it by this one)."""
        f = self
        while f is not None:
            if f is other:
                return True
            f = f.prev
        return other is None

    def verdict(self, nr: int, arch: int, ip: int, args) -> tuple[int, SeccompFilter]:
        """The chain's return value for a call, and the filter that gave it."""
        if arch == AUDIT_ARCH_X86_64:
            known = self.verdicts.get(nr)
            if known is not None:
                return known
        words = _WORDS.unpack(SECCOMP_DATA.pack(nr, arch, ip, *args))
        best, by, wide = RET_ALLOW, self, False
        f = self
        while f is not None:
            ret, read_more = run(f.insns, words)
            wide |= read_more
            if _signed_action(ret) < _signed_action(best):
                best, by = ret, f
            f = f.prev
        if not wide and arch == AUDIT_ARCH_X86_64:
            self.verdicts[nr] = (best, by)
        return best, by


def _signed_action(ret: int) -> int:
    action = ret & ACTION_FULL
    return action - (1 << 32) if action & 0x80000000 else action


def check(raw: bytes) -> tuple:
    """The instructions of a filter as seccomp takes them, or EINVAL as Linux gives it."""
    n = len(raw) // INSN.size
    insns = [INSN.unpack_from(raw, i * INSN.size) for i in range(n)]
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code not in CLASSIC_CODES:
            raise SyscallError(errno.EINVAL)
        if (code in (ALU | DIV | K, ALU | MOD | K) and k == 0) or (code in (ALU | LSH | K, ALU | RSH | K) and k >= 32) \
                or (code in (LD_MEM, LDX_MEM, ST, STX) and k >= BPF_MEMWORDS) \
                or (code == JMP | JA and k >= n - pc - 1) \
                or (code in JUMPS and (pc + jt + 1 >= n or pc + jf + 1 >= n)):
            raise SyscallError(errno.EINVAL)
    if insns[-1][0] not in (RET | K, RET | A):
        raise SyscallError(errno.EINVAL)
    _check_memory(insns)
    out = []
    for code, jt, jf, k in insns:
        if code in _LEN_LOADS:
            code, k = _LEN_LOADS[code], SECCOMP_DATA.size
        elif code == LD_ABS and (k >= SECCOMP_DATA.size or k & 3):
            raise SyscallError(errno.EINVAL)
        elif code not in SECCOMP_CODES:
            raise SyscallError(errno.EINVAL)
        out.append((code, jt, jf, k))
    return tuple(out)


def _check_memory(insns: list) -> None:
    """No scratch word is read on a path that has not written it (check_load_and_stores)."""
    masks = [0xFFFF] * len(insns)
    valid = 0
    for pc, (code, jt, jf, k) in enumerate(insns):
        valid &= masks[pc]
        if code in (ST, STX):
            valid |= 1 << k
        elif code in (LD_MEM, LDX_MEM):
            if not valid & 1 << k:
                raise SyscallError(errno.EINVAL)
        elif code == JMP | JA:
            masks[pc + 1 + k] &= valid
            valid = 0xFFFF
        elif code in JUMPS:
            masks[pc + 1 + jt] &= valid
            masks[pc + 1 + jf] &= valid
            valid = 0xFFFF


def converted_length(insns: tuple) -> int:
    """How many instructions Linux's conversion to eBPF makes of the filter: what
    MAX_INSNS_PER_PATH counts (bpf_convert_filter)."""
    n = 3  # A and X cleared, the context kept
    for code, jt, jf, k in insns:
        if code == RET | K:
            n += 2
        elif code in (ALU | DIV | X, ALU | MOD | X):
            n += 5  # a division by zero returns 0
        elif code in JUMPS:
            n += code & X == K and k >= 0x80000000  # a negative immediate goes through a register
            n += 1 if jf == 0 or (jt == 0 and code & 0xF0 in (JEQ, JGT, JGE)) else 2
        else:
            n += 1
    return n


def run(insns: tuple, words: tuple) -> tuple[int, bool]:
    """Run a checked filter over seccomp_data's 32-bit words: its return value, and whether
    it read anything but nr and arch."""
    a = x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    wide = False
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD_ABS:
            a = words[k >> 2]
            wide |= k >= 8
        elif code == JMP | JEQ | K:
            pc += jt if a == k else jf
        elif code == RET | K:
            return k, wide
        elif code in JUMPS:
            v = x if code & X else k
            op = code & 0xF0
            taken = a > v if op == JGT else a >= v if op == JGE else bool(a & v) if op == JSET else a == v
            pc += jt if taken else jf
        elif code == RET | A:
            return a, wide
        elif code & 7 == ALU:
            op = code & 0xF0
            if op == NEG:
                a = -a & 0xFFFFFFFF
                continue
            v = x if code & X else k
            if op == ADD:
                a = (a + v) & 0xFFFFFFFF
            elif op == SUB:
                a = (a - v) & 0xFFFFFFFF
            elif op == MUL:
                a = (a * v) & 0xFFFFFFFF
            elif op == DIV:
                if v == 0:
                    return 0, wide  # classic BPF: a division by zero ends the filter with 0
                a //= v
            elif op == AND:
                a &= v
            elif op == OR:
                a |= v
            elif op == XOR:
                a ^= v
            elif op == LSH:
                a = (a << (v & 31)) & 0xFFFFFFFF
            else:
                a >>= v & 31
        elif code == JMP | JA:
            pc += k
        elif code == LD_IMM:
            a = k
        elif code == LDX_IMM:
            x = k
        elif code == LD_MEM:
            a = mem[k]
        elif code == LDX_MEM:
            x = mem[k]
        elif code == ST:
            mem[k] = a
        elif code == STX:
            mem[k] = x
        elif code == MISC | TAX:
            x = a
        else:  # MISC | TXA
            a = x


# The listener's ioctls (linux/seccomp.h), and its reply and addfd flags.
IOCTL_NOTIF_RECV, IOCTL_NOTIF_SEND, IOCTL_NOTIF_ID_VALID, IOCTL_NOTIF_ADDFD, IOCTL_NOTIF_SET_FLAGS = (
    0xC0502100, 0xC0182101, 0x40082102, 0x40182103, 0x40082104)
USER_NOTIF_FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD, ADDFD_FLAG_SEND = 1, 2
_NOTIF_HEAD = struct.Struct("<QII")  # struct seccomp_notif: id, pid, flags; then seccomp_data
_NOTIF_RESP = struct.Struct("<QqiI")  # struct seccomp_notif_resp: id, val, error, flags
_NOTIF_ADDFD = struct.Struct("<QIIII")  # struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags
O_CLOEXEC = 0o2000000


@savable
@dataclass(eq=False)
class Notification:
    """A call a filter handed to its listener (SECCOMP_RET_USER_NOTIF): the task waits in
    it until a supervisor answers, and the answer."""

    id: int
    task: object  # the Task that made the call
    call: tuple  # (nr, ip, args): a task that comes back with another call has given this one up
    data: bytes = b""  # struct seccomp_data, as the supervisor receives it
    state: str = "new"  # new, sent (a supervisor received it), replied
    result: int = 0  # what the call returns: the reply's error if not 0, else its val
    proceed: bool = False  # SECCOMP_USER_NOTIF_FLAG_CONTINUE: the call runs after all
    done: WaitQueue = field(default_factory=WaitQueue)  # the task, until the reply

    def alive(self) -> bool:
        return self.task.tg.exit_status is None and self.task in self.task.tg.tasks


@savable
@dataclass(eq=False)
class SeccompListener(OpenFile):
    """The fd SECCOMP_FILTER_FLAG_NEW_LISTENER returns: the calls its filter hands over
    (USER_NOTIF), which a supervisor receives and answers with ioctls; poll says when one
    waits to be received (POLLIN) or answered (POLLOUT). Once it is closed, the calls wait
    no more and the filter's USER_NOTIF gives ENOSYS, as with no listener."""

    notifs: list = field(default_factory=list)  # Notifications not yet replied to, oldest first
    next_id: int = 0
    closed: bool = False
    arrived: WaitQueue = field(default_factory=WaitQueue)  # supervisors and pollers

    def hand_over(self, task, nr: int, ip: int, args) -> Notification:
        """A call of `task` for the supervisor."""
        self.next_id = (self.next_id + 1) & 0xFFFFFFFFFFFFFFFF
        n = Notification(id=self.next_id, task=task, call=(nr, ip, tuple(args)),
                         data=SECCOMP_DATA.pack(nr, AUDIT_ARCH_X86_64, ip, *args))
        self.notifs.append(n)
        self.arrived.notify()
        return n

    def give_up(self, n: Notification) -> None:
        if n in self.notifs:
            self.notifs.remove(n)

    def _live(self) -> list:
        self.notifs = [n for n in self.notifs if n.alive()]
        return self.notifs

    def _sent(self, ident: int) -> Notification:
        for n in self._live():
            if n.id == ident and n.state == "sent":
                return n
        raise SyscallError(errno.ENOENT)

    def _reply(self, n: Notification, result: int, proceed: bool = False) -> None:
        n.state, n.result, n.proceed = "replied", result, proceed
        self.notifs.remove(n)
        n.done.notify()
        self.arrived.notify()

    def ready(self) -> int:
        live = self._live()
        mask = 0x1 | 0x40 if any(n.state == "new" for n in live) else 0  # POLLIN | POLLRDNORM
        if any(n.state == "sent" for n in live):
            mask |= 0x4 | 0x100  # POLLOUT | POLLWRNORM
        return mask

    def queues(self, t) -> tuple:
        return (self.arrived,)

    def ioctl(self, t, request: int, arg: int) -> int:
        if request == IOCTL_NOTIF_RECV:
            if any(t.mm.read(arg, 80)):
                raise SyscallError(errno.EINVAL)  # the struct must come zeroed, to stay extensible
            n = next((n for n in self._live() if n.state == "new"), None)
            if n is None:
                raise WouldBlock(self.arrived)
            n.state = "sent"
            t.mm.write(arg, _NOTIF_HEAD.pack(n.id, n.task.tid, 0) + n.data)
            self.arrived.notify()
            return 0
        if request == IOCTL_NOTIF_SEND:
            ident, val, error, flags = _NOTIF_RESP.unpack(t.mm.read(arg, _NOTIF_RESP.size))
            if flags & ~USER_NOTIF_FLAG_CONTINUE or (flags and (val or error)):
                raise SyscallError(errno.EINVAL)
            self._reply(self._sent(ident), error or val, proceed=bool(flags))
            return 0
        if request == IOCTL_NOTIF_ID_VALID:
            (ident,) = struct.unpack("<Q", t.mm.read(arg, 8))
            self._sent(ident)
            return 0
        if request == IOCTL_NOTIF_ADDFD:
            ident, flags, srcfd, newfd, newfd_flags = _NOTIF_ADDFD.unpack(t.mm.read(arg, _NOTIF_ADDFD.size))
            if flags & ~(ADDFD_FLAG_SETFD | ADDFD_FLAG_SEND) or newfd_flags & ~O_CLOEXEC or \
                    (newfd and not flags & ADDFD_FLAG_SETFD):
                raise SyscallError(errno.EINVAL)
            f = t.fds.get(srcfd)
            n = self._sent(ident)
            fds, cloexec = n.task.tg.fds, bool(newfd_flags & O_CLOEXEC)
            if flags & ADDFD_FLAG_SETFD:
                if newfd >= fds.limit:
                    raise SyscallError(errno.EBADF)
                fds.install_at(newfd, f, cloexec=cloexec)
                fd = newfd
            else:
                fd = fds.install(f, cloexec=cloexec)
            if flags & ADDFD_FLAG_SEND:
                self._reply(n, fd)
            return fd
        raise SyscallError(errno.EINVAL)

    def release(self) -> None:
        """The supervisor is gone: every call waiting gets ENOSYS."""
        self.closed = True
        for n in list(self.notifs):
            self._reply(n, -errno.ENOSYS)

    def describe(self) -> str:
        return "anon_inode:seccomp notify"
