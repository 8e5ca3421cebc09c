"""seccomp(2) filters a program installs, against a native run: the checks Linux makes of
a filter, every action and which of several filters wins, inheritance, TSYNC, strict mode;
a filter run on the arguments as on the number; and a filtered process across a
checkpoint."""

from __future__ import annotations

import pytest

from snapbox.kernel.seccomp import INSN, RET_ALLOW, RET_ERRNO, SeccompFilter, check, converted_length, run
from snapbox.kernel.errors import SyscallError
from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["seccomp", "seccomp-glibc"])
def test_seccomp_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "TRAP returns what the handler left: 42" in want and "strict mode: killed by Killed" in want
    assert "KILL_THREAD: the process lives on" in want and "4096-instruction filters installed: 3" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "seccomp").stdout, want)


@pytest.mark.parametrize("bundle", ["seccompnotify", "seccompnotify-glibc"])
def test_a_supervisor_answers_through_the_listener_as_natively(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "child: getppid answered 4242" in want and "read from the pipe: through the added fd" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "notify").stdout, want)


def test_a_call_waiting_for_its_supervisor_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "seccompnotify", "done", lazy=False)
    assert got == ["holding", "getppid answered 77", "done"]


def test_a_filtered_process_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "seccomp", "done", lazy=False)
    assert got == ["holding", "getppid after: Operation not permitted", "getpid allowed: 1", "done"]


def _filter(*insns) -> tuple:
    return check(b"".join(INSN.pack(*i) for i in insns))


def test_a_verdict_decided_by_the_number_alone_is_remembered_and_one_on_arguments_is_not():
    """Both give Linux's answer each time; only the first is kept by number."""
    # socket (41) refused when its first argument is 7
    by_arg = _filter((0x20, 0, 0, 0), (0x15, 0, 3, 41), (0x20, 0, 0, 16), (0x15, 0, 1, 7),
                     (0x06, 0, 0, RET_ERRNO | 1), (0x06, 0, 0, RET_ALLOW))
    chain = SeccompFilter(insns=by_arg)
    assert chain.verdict(41, 0xC000003E, 0, (7, 0, 0, 0, 0, 0))[0] == RET_ERRNO | 1
    assert chain.verdict(41, 0xC000003E, 0, (8, 0, 0, 0, 0, 0))[0] == RET_ALLOW
    assert chain.verdicts == {}
    by_nr = SeccompFilter(insns=_filter((0x20, 0, 0, 0), (0x15, 0, 1, 39), (0x06, 0, 0, RET_ERRNO | 2),
                                        (0x06, 0, 0, RET_ALLOW)), prev=chain)
    assert by_nr.verdict(39, 0xC000003E, 0, (7, 0, 0, 0, 0, 0))[0] == RET_ERRNO | 2
    assert by_nr.verdict(41, 0xC000003E, 0, (7, 0, 0, 0, 0, 0))[0] == RET_ERRNO | 1  # the older filter's
    assert set(by_nr.verdicts) == {39}


def test_arithmetic_and_division_by_zero_as_classic_bpf_has_them():
    # A = nr; X = 0; A /= X: the filter ends with 0 (KILL_THREAD)
    words = (5,) + (0,) * 15
    assert run(_filter((0x20, 0, 0, 0), (0x01, 0, 0, 0), (0x3C, 0, 0, 0), (0x06, 0, 0, RET_ALLOW)), words) == (0, False)
    # A = -nr, then A >> 28
    assert run(_filter((0x20, 0, 0, 0), (0x84, 0, 0, 0), (0x74, 0, 0, 28), (0x16, 0, 0, 0)), words) == (0xF, False)


def test_converted_length_counts_as_linux_does():
    """What MAX_INSNS_PER_PATH is measured in: a return is two eBPF instructions, a jump on
    a negative constant three when neither target is the next instruction."""
    assert converted_length(_filter((0x06, 0, 0, RET_ALLOW))) == 3 + 2
    assert converted_length(_filter((0x20, 0, 0, 4), (0x15, 1, 2, 0xC000003E), (0x06, 0, 0, 0),
                                    (0x06, 0, 0, 0), (0x06, 0, 0, 0))) == 3 + 1 + 3 + 2 * 3


def test_a_load_outside_seccomp_data_is_refused():
    with pytest.raises(SyscallError):
        _filter((0x20, 0, 0, 64), (0x06, 0, 0, RET_ALLOW))
