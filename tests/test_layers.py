"""Imports point down the stack: cli -> runtime -> kernel -> platform, memfile -> state.

A module may import its own package and the packages below it, never one above: the
kernel never reaches for the runtime or the command line, and snapbox.state imports
nothing of snapbox but itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "snapbox"
# Each layer and what it may import besides itself.
BELOW = {
    "cli": {"runtime", "kernel", "platform", "memfile", "state", "errors"},
    "runtime": {"kernel", "platform", "memfile", "state", "errors"},
    "kernel": {"platform", "memfile", "state"},
    "platform": {"state", "_native"},  # _native: its compiled helpers (CPUID, atomics)
    "memfile": {"state"},
    "state": set(),
    "errors": {"state"},
}
# Within the kernel, the core never imports a syscall handler module (the table, its
# numbers and decorator are the package itself).
HANDLER_MODULES = {p.stem for p in (PACKAGE / "kernel" / "syscalls").glob("*.py")} - {"__init__", "numbers"}


def layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem in BELOW else ""


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snapbox"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("snapbox")]
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if layer(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    mine = layer(path)
    for name in imports(path):
        parts = name.split(".")
        if len(parts) < 2:
            continue  # `import snapbox` (its version, its file's place)
        target = parts[1]
        assert target == mine or target in BELOW[mine], f"{path.relative_to(PACKAGE)} imports {name}"
        in_core = mine == "kernel" and "syscalls" not in path.parts
        if in_core and len(parts) > 3 and parts[2] == "syscalls":
            assert parts[3] not in HANDLER_MODULES, f"{path.relative_to(PACKAGE)} imports handler module {name}"
