"""The sandbox process's host cgroup, as runc makes one for a container's processes.

A bundle's `linux.cgroupsPath` (what containerd and Docker set) names a cgroup that the
sandbox process (the sentry) joins before it starts any stub, so that every host process of
the sandbox is in it: containerd's shim reads it for `ctr task metrics` (memory, CPU, pids
of the whole sandbox as the host sees it: the sentry, the stubs and the memory file's
pages; memory from when it joined: under v1, pages touched before stay charged where they
were). snapbox limits the program's memory itself (linux.resources.memory.limit, in the
sentry's memory file); the cgroup is for accounting, and nothing is written to its limits.

Both layouts are handled: cgroup v2 (one hierarchy) and v1 (one per controller, each of
them joined). A path in systemd's form, `slice:prefix:name` (Docker's and containerd's
with the systemd driver), is the scope that systemd would make, `/slice/prefix-name.scope`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from snapbox.errors import SnapboxError


def hierarchies() -> list[str]:
    """The mount points of this host's cgroup hierarchies (v1 and v2)."""
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(fields[4])
    return found


def relative_path(cgroups_path: str) -> str:
    """The cgroup (below each hierarchy's root) that `linux.cgroupsPath` names."""
    parts = cgroups_path.split(":")
    if len(parts) == 3:
        slice_, prefix, name = parts
        return f"/{slice_ or 'system.slice'}/{prefix}-{name}.scope" if prefix else f"/{slice_}/{name}"
    if not cgroups_path.startswith("/") or ".." in cgroups_path.split("/"):
        raise SnapboxError(f"linux.cgroupsPath {cgroups_path!r} must be an absolute path without '..'")
    return os.path.normpath(cgroups_path)


def create(path: str) -> list[str]:
    """Make cgroup `path` in every hierarchy; returns the directories to remove with the
    sandbox (those made, and the cgroup itself: the sandbox's alone). A cgroup that holds
    processes already is another's: refused, as runc refuses it."""
    made = []
    for top in hierarchies():
        where = top
        for part in path.strip("/").split("/"):
            parent, where = where, os.path.join(where, part)
            try:
                os.mkdir(where)
            except FileExistsError:
                continue
            except OSError as e:
                _undo(made)
                raise SnapboxError(f"cannot make cgroup {where} ({e.strerror})") from None
            made.append(where)
            _inherit_cpuset(parent, where)
        if where not in made:
            if _members(where):
                _undo(made)
                raise SnapboxError(f"cgroup {where} is in use by other processes")
            made.append(where)
    return made


def _undo(made: list[str]) -> None:
    for d in reversed(made):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _members(cgroup: str) -> list[int]:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _inherit_cpuset(parent: str, child: str) -> None:
    """A new v1 cpuset cgroup takes no process until its CPUs and memory nodes are set: its
    parent's, as runc does."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        with contextlib.suppress(OSError):
            with open(os.path.join(child, name)) as f:
                if f.read().strip():
                    continue
            with open(os.path.join(parent, name)) as f:
                value = f.read().strip()
            with open(os.path.join(child, name), "w") as f:
                f.write(value)


def join(path: str) -> None:
    """Move this process into cgroup `path` in every hierarchy where it exists."""
    for top in hierarchies():
        procs = os.path.join(top, path.strip("/"), "cgroup.procs")
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SnapboxError(f"cannot join cgroup {os.path.dirname(procs)} ({e.strerror})") from None


def remove(made: list[str], timeout: float = 2.0) -> None:
    """Remove the directories create() made, deepest first: the sandbox's own once its
    processes are gone (what is left of them, stubs of a killed sandbox, is killed), a
    parent only if no other cgroup is in it."""
    deadline = time.monotonic() + timeout
    for d in sorted(made, key=len, reverse=True):
        own = not any(other.startswith(d + "/") for other in made)  # the sandbox's cgroup itself
        while True:
            try:
                os.rmdir(d)
            except OSError as e:
                if e.errno == errno.EBUSY and own and time.monotonic() < deadline:
                    for pid in _members(d):
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.01)
                    continue
                if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    raise SnapboxError(f"cannot remove cgroup {d} ({e.strerror})") from None
            break
