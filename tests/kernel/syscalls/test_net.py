"""Unix sockets: socketpair, bound names, SCM_RIGHTS, against native runs."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import same_output


@pytest.mark.parametrize("bundle", ["sockets", "sockets-glibc"])
def test_unix_sockets_match_native(snapbox, images, tmp_path, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    assert "recv 2: second fd=yes" in want and "pipe: through the pipe" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "so").stdout, want)
