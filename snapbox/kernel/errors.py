"""How syscall handlers report failure and blocking to the dispatcher."""

from __future__ import annotations

import errno as _errno


class SyscallError(Exception):
    """A syscall failed: the dispatcher returns -errno to the application."""

    def __init__(self, errno: int, why: str = "") -> None:
        super().__init__(errno, why)
        self.errno = errno

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {self.args[1]}" if self.args[1] else name


class WouldBlock(Exception):
    """Raised before any visible side effect: park the task until a waitable fires or a
    deadline passes, then run the handler again from the start."""

    def __init__(self, *waitables, deadline: int | None = None) -> None:
        super().__init__()
        self.waitables = waitables  # WaitQueue objects the task waits on
        self.deadline = deadline  # sandbox-monotonic ns, or None for no time limit


class TaskExit(Exception):
    """The calling task is gone (exit, exit_group, fatal signal): nothing to resume."""
