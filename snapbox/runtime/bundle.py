"""OCI bundles: the parts of config.json that snapbox runs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from snapbox.errors import BundleError
from snapbox.kernel.creds import CAP_NAMES, parse_caps
from snapbox.runtime import cgroups

log = logging.getLogger("snapbox.bundle")

# Top-level and process fields snapbox reads; any other field gets a warning.
_KNOWN = {"ociVersion", "process", "root", "hostname", "annotations", "linux", "mounts", "hooks"}
RLIMIT_NAMES = {"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
            "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
            "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
            "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15}
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
# Mount types served by the sentry itself: /proc and /dev are always there.
_BUILTIN_MOUNTS = {("proc", "/proc"), ("tmpfs", "/dev")}
_KNOWN_PROCESS = {"args", "env", "cwd", "terminal", "user", "rlimits", "noNewPrivileges", "capabilities"}
_CAP_SETS = ("effective", "permitted", "inheritable", "bounding", "ambient")


@dataclass
class Bundle:
    """A parsed bundle: what to run and on which root filesystem."""

    path: str  # absolute path of the bundle directory
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    rootfs: str = ""  # absolute host path of the root filesystem
    hostname: str = "snapbox"
    annotations: dict = field(default_factory=dict)
    memory_limit: int = 0  # linux.resources.memory.limit in bytes; 0 for none
    cgroup: str = ""  # linux.cgroupsPath, as a path below each hierarchy's root (runtime.cgroups)
    user: tuple = (0, 0)  # process.user (uid, gid)
    groups: list = field(default_factory=list)  # process.user.additionalGids
    readonly: bool = False  # root.readonly: only tmpfs mounts and read-write binds can be written
    terminal: bool = False  # process.terminal: the program runs on the caller's terminal
    rlimits: dict = field(default_factory=dict)  # RLIMIT_* number -> (soft, hard)
    no_new_privs: bool = False  # process.noNewPrivileges
    # process.capabilities: set name (effective, permitted, ...) -> capability bits; None
    # when absent (root then has every capability, another user none)
    capabilities: dict | None = None
    hooks: dict = field(default_factory=dict)  # kind -> [{"path", "args", "env", "timeout"}]
    config: dict = field(default_factory=dict)  # config.json as read
    # ("tmpfs", destination, ""), or ("bind" / "rw-bind", destination, host source)
    mounts: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # config fields snapbox ignores

    @classmethod
    def load(cls, path: str) -> Bundle:
        path = os.path.abspath(path)
        config_path = os.path.join(path, "config.json")
        try:
            with open(config_path) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise BundleError(f"bundle {path} has no config.json") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read {config_path} ({e})") from None
        if not isinstance(config, dict):
            raise BundleError(f"{config_path} is not a JSON object")
        process = config.get("process")
        if not isinstance(process, dict):
            raise BundleError(f"{config_path} has no process section")
        args = process.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise BundleError(f"{config_path}: process.args must be a non-empty list of strings")
        env = process.get("env", [])
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise BundleError(f"{config_path}: process.env must be a list of strings")
        cwd = process.get("cwd", "/")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise BundleError(f"{config_path}: process.cwd must be an absolute path")
        root = config.get("root", {})
        root_path = root.get("path", "rootfs") if isinstance(root, dict) else None
        if not isinstance(root_path, str):
            raise BundleError(f"{config_path}: root.path must be a string")
        rootfs = os.path.join(path, root_path)
        if not os.path.isdir(rootfs):
            raise BundleError(f"bundle rootfs {rootfs} is not a directory")
        warnings = [f"config field {k!r} is not supported and is ignored"
                    for k in config if k not in _KNOWN]
        warnings += [f"config field 'process.{k}' is not supported and is ignored"
                     for k in process if k not in _KNOWN_PROCESS]
        terminal = bool(process.get("terminal"))
        user = process.get("user") or {}
        if not isinstance(user, dict) or not all(isinstance(user.get(k, 0), int) for k in ("uid", "gid")):
            raise BundleError(f"{config_path}: process.user needs numeric uid and gid")
        groups = user.get("additionalGids") or []
        if not isinstance(groups, list) or not all(isinstance(g, int) for g in groups):
            raise BundleError(f"{config_path}: process.user.additionalGids must be numbers")
        capabilities = None
        if process.get("capabilities") is not None:
            caps = process["capabilities"]
            if not isinstance(caps, dict) or not all(isinstance(caps.get(k, []), list) for k in _CAP_SETS):
                raise BundleError(f"{config_path}: process.capabilities must hold lists of capability names")
            capabilities = {}
            for kind in _CAP_SETS:
                known = [n for n in caps.get(kind, []) if n in CAP_NAMES]
                # runc too ignores capabilities it does not know, with a warning
                warnings += [f"unknown capability {n!r} in process.capabilities.{kind} is ignored"
                             for n in caps.get(kind, []) if n not in CAP_NAMES]
                capabilities[kind] = parse_caps(known)
        rlimits = {}
        for r in process.get("rlimits") or []:
            if not isinstance(r, dict) or r.get("type") not in RLIMIT_NAMES or \
                    not all(isinstance(r.get(k), int) for k in ("soft", "hard")) or r["soft"] > r["hard"]:
                raise BundleError(f"{config_path}: bad process.rlimits entry {r!r}")
            rlimits[RLIMIT_NAMES[r["type"]]] = (r["soft"], r["hard"])
        hooks = config.get("hooks") or {}
        if not isinstance(hooks, dict):
            raise BundleError(f"{config_path}: hooks must be an object")
        for kind, entries in hooks.items():
            if kind not in HOOK_KINDS:
                warnings.append(f"hooks of kind {kind!r} are not known and are ignored")
            elif not isinstance(entries, list) or not all(isinstance(h, dict) and isinstance(h.get("path"), str)
                                                          for h in entries):
                raise BundleError(f"{config_path}: every {kind} hook needs a path")
        linux = config.get("linux") or {}
        limit = ((linux.get("resources") or {}).get("memory") or {}).get("limit") or 0
        if not isinstance(limit, int) or limit < 0:
            raise BundleError(f"{config_path}: linux.resources.memory.limit must be a byte count")
        warnings += [f"config field 'linux.{k}' is not supported and is ignored"
                     for k in linux if k not in ("resources", "namespaces", "cgroupsPath")]
        cgroups_path = linux.get("cgroupsPath") or ""
        if not isinstance(cgroups_path, str):
            raise BundleError(f"{config_path}: linux.cgroupsPath must be a string")
        cgroup = cgroups.relative_path(cgroups_path) if cgroups_path else ""
        mounts = []
        for m in config.get("mounts") or []:
            if not isinstance(m, dict) or not isinstance(m.get("destination"), str):
                raise BundleError(f"{config_path}: every mount needs a destination")
            dest, kind = m["destination"], m.get("type", "")
            options = m.get("options") or []
            if not dest.startswith("/"):
                raise BundleError(f"{config_path}: mount destination {dest!r} is not absolute")
            if (kind, dest) in _BUILTIN_MOUNTS:
                continue
            if kind == "tmpfs":
                mounts.append(("tmpfs", dest, ""))
            elif kind == "bind" or "bind" in options or "rbind" in options:
                source = os.path.join(path, m.get("source", ""))
                if not os.path.exists(source):
                    raise BundleError(f"{config_path}: bind mount source {source} does not exist")
                mounts.append(("bind" if "ro" in options else "rw-bind", dest, source))
            else:
                warnings.append(f"mount of type {kind!r} on {dest} is not supported and is ignored")
        return cls(path=path, args=args, env=env, cwd=cwd, rootfs=rootfs,
                   hostname=config.get("hostname") or "snapbox",
                   annotations=config.get("annotations") or {}, memory_limit=limit, cgroup=cgroup, mounts=mounts,
                   user=(user.get("uid", 0), user.get("gid", 0)), groups=groups,
                   readonly=bool(isinstance(root, dict) and root.get("readonly")), terminal=terminal, rlimits=rlimits,
                   no_new_privs=bool(process.get("noNewPrivileges")), capabilities=capabilities,
                   hooks={k: v for k, v in hooks.items() if k in HOOK_KINDS}, config=config, warnings=warnings)


    def absolute_config(self) -> dict:
        """config.json with its root and bind sources as absolute paths: usable from anywhere."""
        config = json.loads(json.dumps(self.config))
        config.setdefault("root", {})["path"] = self.rootfs
        for m in config.get("mounts") or []:
            if isinstance(m, dict) and isinstance(m.get("source"), str) and (
                    m.get("type") == "bind" or "bind" in (m.get("options") or []) or "rbind" in (m.get("options") or [])):
                m["source"] = os.path.join(self.path, m["source"])
        return config


def default_spec() -> dict:
    """The config.json `snapbox spec` writes: sh on ./rootfs, with the usual mounts."""
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "snapbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
        ],
    }
