"""File descriptors: record locks and flock, /dev's files, owners and signal-driven I/O,
what a file description shows of itself (F_GETFL, /proc/self/fdinfo, ESPIPE), and how much
of a write is written (RLIMIT_FSIZE, a buffer that faults part-way)."""

from __future__ import annotations

import pytest

from tests.conftest import busybox_bundle, held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["locks", "locks-glibc"])
def test_file_locks_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "child waits 0" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "lk").stdout, want)


def test_dev_null_zero_and_random(snapbox, images, tmp_path):
    script = """
    echo gone > /dev/null && echo null-ok
    head -c 5 /dev/zero | od -An -tx1
    head -c 16 /dev/urandom | wc -c
    echo x > /dev/full || echo full-refused
    ls -l /dev/null | cut -c1-10
    """
    bundle = busybox_bundle(images, tmp_path, script)
    p = snapbox("run", "--bundle", str(bundle), "dev", check=False)
    assert p.stdout.split("\n")[:5] == ["null-ok", " 00 00 00 00 00", "16", "full-refused", "crw-rw-rw-"]
    assert "No space left on device" in p.stderr


@pytest.mark.parametrize("bundle", ["fowner", "fowner-glibc"])
def test_file_owners_and_dnotify_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "a file made: signals 1, si_fd the directory's: yes" in want and "two removed: signals 3" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "fo").stdout, want)


@pytest.mark.parametrize("bundle", ["sigio", "sigio-glibc"])
def test_signal_driven_io_matches_native(snapbox, images, bundle):
    """O_ASYNC (F_SETFL, FIOASYNC) on a pipe and a unix socket: SIGIO to the owner (a process,
    its group, a thread), F_SETSIG's signal with si_code, si_fd and si_band, none without
    an owner, once O_ASYNC is cleared, or to a process whoever set the owner could not signal."""
    want = native_fixture(images, bundle)
    assert "with F_SETSIG: 1 signals, si_code POLL_IN, si_fd is the fd: yes, si_band 0x41" in want
    assert "owner set by another user's process: 0 SIGIO (child exited 0)" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "sio").stdout, want)


def test_signal_driven_io_goes_on_after_a_restore(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "sigio", "done", lazy=False)
    assert got == ["holding", "after the hold, a write: 1 SIGIO", "done"]


@pytest.mark.parametrize("bundle", ["fileedges", "fileedges-glibc"])
def test_file_flags_positional_io_and_fdinfo_match_native(snapbox, images, tmp_path, bundle):
    """F_GETFL with O_LARGEFILE and without the open-only flags, ESPIPE before EBADF for
    pread/pwrite on a stream, /proc/self/fdinfo, and a connected unix socket named later
    (its peer sees the name), and a read whose fd another thread closes (it goes on, holding
    the pipe's reading end until it returns)."""
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "the blocked read, its fd closed meanwhile: ok, 1 byte 'z'" in want
    assert "a write once it returned: Broken pipe" in want
    assert "F_GETFL a directory: 0300000" in want and "pread of a pipe's write end: I" in want  # Illegal/Invalid seek
    assert "recvfrom: 1 from edges.client" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "fe").stdout, want)


@pytest.mark.parametrize("bundle", ["writelimits", "writelimits-glibc"])
def test_rlimit_fsize_and_partial_writes_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "write 1025 under a limit of 1024: 1024" in want and "SIGXFSZ pending: 1, code 0, pid ours 1" in want
    assert "write running into an unmapped page: 2048" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "wl").stdout, want)
