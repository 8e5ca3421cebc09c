"""`snapbox inspect`: a readable account of what an image holds, without running it."""

from __future__ import annotations

import collections
import datetime
import os
from typing import IO, Any

from snapbox.kernel.checkpoint import LoadContext, parent_chain
from snapbox.kernel.kernel import Kernel
from snapbox.state.image import ImageReader
from snapbox.kernel.syscalls.numbers import NAMES
from snapbox.runtime.progress import human


def _vma_kind(kind: str) -> str:
    return kind if kind in ("anon", "heap", "stack") else f"file {kind}"


def describe(f: IO[bytes]) -> dict[str, Any]:
    """Read a whole image (checksums included) and summarise it as plain data."""
    if f.seekable():
        start = f.tell()
        r = ImageReader(f)
        if r.meta.get("pre_dump"):
            return _describe_pre_dump(r)
        f.seek(start)
    kernel, summary = Kernel.read_image(f, LoadContext(), check_cpu=False, load_memory=False)
    meta = summary["meta"]
    fs = kernel.features
    processes = []
    for tgid, tg in sorted(kernel.tasks.pidns.groups.items()):
        tasks = []
        for t in tg.tasks:
            state = (f"in {NAMES.get(t.saved_syscall, '?')} (syscall {t.saved_syscall})"
                     if t.saved_syscall >= 0 else "running")
            tasks.append({"tid": t.tid, "comm": t.comm, "state": state})
        kinds: dict[str, int] = collections.Counter()
        for v in tg.mm.vmas:
            kinds[_vma_kind(v.kind)] += v.end - v.start
        processes.append({
            "pid": tgid,
            "ppid": tg.parent.tgid if tg.parent is not None else 0,
            "exe": tg.exe,
            "argv": [a.decode("utf-8", "replace") for a in tg.argv],
            "exited": tg.exit_status is not None,
            "tasks": tasks,
            "fds": {fd: _describe_file(f) for fd, f in sorted(tg.fds.files.items())},
            "vmas": len(tg.mm.vmas),
            "mapped": sum(kinds.values()),
            "memory_by_kind": dict(kinds),
        })
    sections = {s["name"]: s["bytes"] for s in summary["sections"]}
    memory_saved = summary.get("memory_saved", 0)
    return {
        "format": summary["format"],
        "snapbox": meta.get("snapbox"),
        "created": meta.get("created"),
        "host": meta.get("host"),
        "image_id": meta.get("image_id"),
        "host_kernel": meta.get("kernel"),
        "compression": meta.get("compression"),
        "cpu": {"vendor": fs.vendor, "family": fs.family, "model": fs.model,
                "features": sorted(fs.features), "xcr0": fs.xcr0, "xsave_size": fs.xsave_size},
        "hostname": kernel.hostname,
        "network": kernel.network_report(),
        "processes": processes,
        "objects": {name: {"count": c, "bytes": b} for name, (c, b) in sorted(summary.get("types", {}).items())},
        "graph_bytes": summary.get("graph_bytes", 0),
        "sections": sections,
        "memory": {"allocated": summary.get("memory_allocated", 0), "saved": memory_saved,
                   "stored": sections.get("memory", 0),
                   "ratio": round(sections.get("memory", 0) / memory_saved, 3) if memory_saved else None},
        "parent": meta.get("parent"),
        "chain": summary["chain"],
        "dropped": sum(n for _, n in summary.get("dropped") or []),
        "written_pages": summary.get("written_pages"),
        "file_references": [{"path": os.path.join(kernel.fs.host(p.layer).path, p.path), "size": p.size,
                             "mtime": p.mtime, "referenced": min(p.filled_bytes(), p.size), "sha256": p.digest.hex()}
                            for p in kernel.file_cache.files if not p.stored],
    }


def _describe_pre_dump(r: ImageReader) -> dict[str, Any]:
    """A pre-dump: its header, parent chain and memory (it holds nothing else)."""
    meta = r.meta
    r.read_section("cpuid")
    stored = sum(len(chunk) for chunk in r.section("memory"))
    summary = r.finish()
    chain = parent_chain(meta)
    for _, ancestor in chain:
        ancestor.f.close()
    return {"pre_dump": True, "format": r.version, "snapbox": meta.get("snapbox"), "created": meta.get("created"),
            "host": meta.get("host"), "image_id": meta.get("image_id"), "parent": meta.get("parent"),
            "chain": [path for path, _ in chain],
            "memory": {"allocated": summary.get("memory_allocated", 0), "saved": summary.get("memory_saved", 0),
                       "stored": stored},
            "dropped": sum(n for _, n in summary.get("dropped") or []),
            "written_pages": summary.get("written_pages")}


def _chain_lines(info: dict[str, Any]) -> list[str]:
    lines = []
    if info.get("written_pages"):
        lines.append(f"written pages found by: {info['written_pages']}")
    if not info.get("parent"):
        return lines
    lines.append(f"parent: {info['parent']['path']} (chain of {len(info['chain'])} pre-dumps, oldest first: "
                 f"{', '.join(info['chain'])})")
    if info.get("dropped"):
        lines.append(f"pages dropped since the parent: {human(info['dropped'])}")
    return lines


def _describe_file(f) -> str:
    text = f.describe()
    if type(f).__name__ == "RegularFile":
        text += f" (offset {f.offset})"
    return text


def render(info: dict[str, Any]) -> str:
    """The text form of describe()'s summary."""
    created = datetime.datetime.fromtimestamp(info["created"] or 0, datetime.timezone.utc)
    if info.get("pre_dump"):
        mem = info["memory"]
        return "\n".join([
            f"pre-dump (memory only: restore the checkpoint made after it with --parent-path), image format "
            f"{info['format']}, made by snapbox {info['snapbox']} on {info['host']} at "
            f"{created:%Y-%m-%d %H:%M:%S} UTC",
            *_chain_lines(info),
            f"memory: {human(mem['saved'])} of data saved of {human(mem['allocated'])} allocated, "
            f"stored in {human(mem['stored'])}",
        ])
    cpu = info["cpu"]
    lines = [
        f"image format {info['format']}, made by snapbox {info['snapbox']} on {info['host']} "
        f"(Linux {info['host_kernel']}) at {created:%Y-%m-%d %H:%M:%S} UTC, compression {info['compression']}",
        f"cpu: {cpu['vendor']} family {cpu['family']} model {cpu['model']}, "
        f"{len(cpu['features'])} features, XSAVE area {cpu['xsave_size']} bytes (xcr0 {cpu['xcr0']:#x})",
        f"  {' '.join(cpu['features'])}",
        *_chain_lines(info),
        f"hostname: {info['hostname']}",
        "network: " + (" ".join(f"{k} {' '.join(v) if isinstance(v, list) else v}"
                                for k, v in info["network"].items()) or "mode none"),
        "processes:",
    ]
    for p in info["processes"]:
        exited = " (exited)" if p["exited"] else ""
        lines.append(f"  pid {p['pid']} (ppid {p['ppid']}){exited}: {' '.join(p['argv'])}")
        for t in p["tasks"]:
            lines.append(f"    task {t['tid']} {t['comm']}: {t['state']}")
        for fd, what in p["fds"].items():
            lines.append(f"    fd {fd}: {what}")
        kinds = ", ".join(f"{k} {human(n)}" for k, n in sorted(p["memory_by_kind"].items()))
        lines.append(f"    memory: {p['vmas']} VMAs, {human(p['mapped'])} mapped ({kinds})")
    objs = info["objects"]
    lines.append(f"objects: {sum(o['count'] for o in objs.values())} in a {human(info['graph_bytes'])} graph")
    for name, o in objs.items():
        lines.append(f"  {name:<14} {o['count']:>6}  {human(o['bytes'])}")
    mem = info["memory"]
    lines.append("sections: " + ", ".join(f"{k} {human(v)}" for k, v in info["sections"].items()))
    ratio = f", stored at {mem['ratio']:.2f} of that" if mem["ratio"] is not None else ""
    lines.append(f"memory: {human(mem['allocated'])} allocated, {human(mem['saved'])} of data saved"
                 f" (holes and zero pages left out){ratio}")
    refs = info["file_references"]
    if refs:
        total = sum(r["referenced"] for r in refs)
        lines.append(f"file pages referenced, not stored: {human(total)} of {len(refs)} host files")
        for r in refs:
            lines.append(f"  {r['path']}: {human(r['referenced'])} of {human(r['size'])}")
    return "\n".join(lines)
