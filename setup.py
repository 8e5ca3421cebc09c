"""Build hooks (metadata lives in pyproject.toml): compiles snapbox/_native.c through cffi,
and the native `snapbox` command, snapbox/front.c, which every install gets as its
`snapbox`: it hands commands to a root's warm pool without starting an interpreter. Where
no C compiler is found, the command is a Python script instead (correct, only slower)."""

import os
import shutil
import subprocess
import sys

from setuptools import setup

from distutils.command.build_scripts import build_scripts  # noqa: E402 - setuptools provides it: import it after

FRONT = os.path.join("build", "front", "snapbox")


def front_end() -> str:
    """build/front/snapbox: the compiled front end, or the Python command line."""
    os.makedirs(os.path.dirname(FRONT), exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is not None:
        made = subprocess.run([cc, "-O2", "-Wall", f'-DSNAPBOX_PYTHON="{sys.executable}"', "-o", FRONT,
                               os.path.join("snapbox", "front.c")])
        if made.returncode == 0:
            return FRONT
    print("snapbox: no C compiler: the snapbox command will be the Python one", file=sys.stderr)
    with open(FRONT, "w") as f:
        f.write("#!python\nimport sys\nfrom snapbox.cli import main\nsys.exit(main())\n")
    return FRONT


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


setup(cffi_modules=["snapbox/_native_build.py:ffibuilder"], scripts=[front_end()],
      cmdclass={"build_scripts": BuildScripts})
