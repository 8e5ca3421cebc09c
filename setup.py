"""Build hooks (metadata lives in pyproject.toml): compiles snapbox/_native.c through cffi;
the native `snapbox` command, snapbox/front.c, which every install gets as its `snapbox`:
it hands commands to a root's warm pool without starting an interpreter; and the sandbox's
vDSO, snapbox/platform/vdso.c (see snapbox/kernel/vdso.py). Where no C compiler is found,
the command is a Python script instead and sandboxes have no vDSO (correct, only slower)."""

import os
import shutil
import subprocess
import sys

from setuptools import setup

from distutils.command.build_scripts import build_scripts  # noqa: E402 - setuptools provides it: import it after

FRONT = os.path.join("build", "front", "snapbox")
VDSO = os.path.join("snapbox", "platform", "vdso")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def front_end() -> str:
    """build/front/snapbox: the compiled front end, or the Python command line."""
    os.makedirs(os.path.dirname(FRONT), exist_ok=True)
    cc = compiler()
    if cc is not None:
        made = subprocess.run([cc, "-O2", "-Wall", f'-DSNAPBOX_PYTHON="{sys.executable}"', "-o", FRONT,
                               os.path.join("snapbox", "front.c")])
        if made.returncode == 0:
            return FRONT
    print("snapbox: no C compiler: the snapbox command will be the Python one", file=sys.stderr)
    with open(FRONT, "w") as f:
        f.write("#!python\nimport sys\nfrom snapbox.cli import main\nsys.exit(main())\n")
    return FRONT


def vdso() -> None:
    """snapbox/platform/vdso.so: a shared object with no relocations, linked at 0, its
    code reading the page below it (vdso.lds); symbols versioned LINUX_2.6, with both
    hash tables (musl reads DT_HASH, others DT_GNU_HASH)."""
    cc = compiler()
    if cc is None:
        return
    made = subprocess.run([cc, "-O2", "-Wall", "-fPIC", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
                           "-fno-builtin", "-mgeneral-regs-only", "-nostdlib", "-shared",
                           f"-Wl,-T,{VDSO}.lds", "-Wl,--hash-style=both", "-Wl,-soname=linux-vdso.so.1",
                           "-Wl,-Bsymbolic", "-Wl,-z,max-page-size=4096", "-Wl,--build-id=none",
                           "-o", f"{VDSO}.so", f"{VDSO}.c"])
    if made.returncode != 0:
        print("snapbox: the vDSO did not build: sandboxes will have none", file=sys.stderr)


class BuildScripts(build_scripts):
    """Copies a compiled script as it is (the stock command reads every script as text)."""

    def copy_scripts(self):
        binaries = [s for s in self.scripts if not _starts_with_shebang(s)]
        self.scripts = [s for s in self.scripts if s not in binaries]
        outfiles, updated = super().copy_scripts() if self.scripts else ([], [])
        self.mkpath(self.build_dir)
        for script in binaries:
            out = os.path.join(self.build_dir, os.path.basename(script))
            self.copy_file(script, out)
            os.chmod(out, 0o755)
            outfiles.append(out)
            updated.append(out)
        return outfiles, updated


def _starts_with_shebang(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


vdso()
setup(cffi_modules=["snapbox/_native_build.py:ffibuilder"], scripts=[front_end()],
      cmdclass={"build_scripts": BuildScripts})
