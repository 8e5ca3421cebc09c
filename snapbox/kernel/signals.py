"""Signal numbers and their default actions (signal(7))."""

from __future__ import annotations

import enum

NSIG = 64
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = 1, 2, 3, 4, 5, 6, 7, 8
SIGKILL, SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGSTKFLT = 9, 10, 11, 12, 13, 14, 15, 16
SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGXCPU = 17, 18, 19, 20, 21, 22, 23, 24
SIGXFSZ, SIGVTALRM, SIGPROF, SIGWINCH, SIGIO, SIGPWR, SIGSYS = 25, 26, 27, 28, 29, 30, 31

SIG_DFL, SIG_IGN = 0, 1
SA_NOCLDSTOP, SA_NOCLDWAIT, SA_SIGINFO, SA_ONSTACK = 0x1, 0x2, 0x4, 0x08000000
SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_RESTORER = 0x10000000, 0x40000000, 0x80000000, 0x04000000
CORE_DUMPED = 0x80  # wait status bit: the process dumped core


class Default(enum.Enum):
    TERM = "terminate"
    CORE = "terminate and dump core"
    IGNORE = "ignore"
    STOP = "stop"
    CONT = "continue"


_CORE = {SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU, SIGXFSZ, SIGSYS}
_IGNORE = {SIGCHLD, SIGURG, SIGWINCH}
_STOP = {SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU}


def default_action(sig: int) -> Default:
    if sig in _CORE:
        return Default.CORE
    if sig in _IGNORE:
        return Default.IGNORE
    if sig in _STOP:
        return Default.STOP
    if sig == SIGCONT:
        return Default.CONT
    return Default.TERM


def sigbit(sig: int) -> int:
    """The bit of signal `sig` in a sigset_t."""
    return 1 << (sig - 1)
