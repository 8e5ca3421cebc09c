"""The control protocol: the table of operations, the checks on both ends, and a real
sandbox refusing a malformed request while it runs on."""

from __future__ import annotations

import json
import socket

import pytest

from snapbox.runtime import control
from snapbox.runtime.sandbox import Sandbox
from tests.conftest import lines, wait_for


def test_every_operation_has_a_handler_and_every_handler_an_operation():
    assert set(Sandbox.operations) == set(control.OPERATIONS)


@pytest.mark.parametrize("op,msg,why", [
    ("reboot", {}, "unknown control operation 'reboot'"),
    ("kill", {"signal": "nine"}, "kill field 'signal' must be int, not str"),
    ("kill", {"signal": True}, "kill field 'signal' must be int, not bool"),
    ("stats", {"verbose": True}, "stats request has an unknown field 'verbose'"),
    ("checkpoint", {"path": b"/x"}, "checkpoint field 'path' must be str, not bytes"),
])
def test_a_malformed_request_is_refused_by_name(op, msg, why):
    with pytest.raises(control.ControlError, match=f"^{why}$".replace("(", r"\(").replace(")", r"\)")):
        control.check(op, msg)


def test_replies_are_checked_too():
    control.check("ps", {"ok": True, "processes": []}, reply=True)
    with pytest.raises(control.ControlError, match="ps field 'processes' must be list"):
        control.check("ps", {"ok": True, "processes": {}}, reply=True)


@pytest.mark.parametrize("status,code", [(0, 0), (7 << 8, 7), (9, 137), (15, 143)])
def test_exit_code_of_a_wait_status(status, code):
    assert control.exit_code(status) == code


def test_a_sandbox_refuses_a_malformed_request_and_runs_on(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out)
    wait_for(lambda: lines(out), timeout=30, what="the counter")
    path = str(snapbox.root / "c1" / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        control.send_message(sock, {"op": "kill", "signal": "nine"})  # past the client's own check
        reply, _ = control.recv_message(sock)
    assert reply == {"ok": False, "error": "kill field 'signal' must be int, not str"}
    stats = control.call(path, "stats")["stats"]
    assert stats["pids"]["current"] == 1
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "running"
    snapbox("kill", "c1", "KILL")
