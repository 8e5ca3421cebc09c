"""runc's command-line contract, as containerd's shim drives it: the log's format, flags runc
takes, `features`, runc's wording where containerd matches on it, warnings in the log, and
`exec --detach --pid-file`, whose pid the shim waits for."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import wait_for
from tests.e2e.test_cli import sleeper, start


def log_entries(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_log_lines_carry_an_rfc3339_time_and_usage_errors_reach_the_log(snapbox, tmp_path):
    log = tmp_path / "runtime.log"
    p = snapbox("--log", str(log), "--log-format", "json", "--no-such-flag", "list", check=False)
    assert p.returncode == 2 and p.stderr.startswith("snapbox: error: No such option '--no-such-flag'")
    (entry,) = log_entries(log)
    assert entry["level"] == "error" and "--no-such-flag" in entry["msg"]
    assert datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None  # RFC 3339: with its offset
    p = snapbox("--log=" + str(log), "--log-format=json", "state", "nope", check=False)
    assert p.returncode == 1 and log_entries(log)[-1]["msg"] == 'container "nope" does not exist'


def test_the_global_flags_runc_takes_are_accepted(snapbox):
    p = snapbox("--systemd-cgroup", "--rootless", "false", "--criu", "/usr/sbin/criu", "list")
    assert p.stdout.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED"]


def test_long_options_with_one_dash_as_go_parses_them(snapbox, tmp_path):
    """containerd passes some of runc's options with one dash (`restore -no-subreaper`);
    Go takes them, and so must snapbox, but never in the program's own arguments."""
    p = snapbox("-log-format", "json", "-log", str(tmp_path / "log.json"), "list", "-format", "json")
    assert json.loads(p.stdout) == []
    p = snapbox("do", "echo", "-d", "-root", "--help")
    assert p.stdout == "-d -root --help\n"


def test_a_bundles_cgroup_holds_every_host_process_of_the_sandbox(snapbox, images, tmp_path):
    """linux.cgroupsPath, as containerd sets it: the sandbox process and its stubs are in
    it in every hierarchy (what the shim reads for `ctr task metrics`), and delete removes it."""
    from snapbox.runtime.cgroups import hierarchies

    name = f"/snapbox-test-{os.getpid()}/c1"
    sleeper_bundle = sleeper(images, tmp_path)
    config = json.loads((sleeper_bundle / "config.json").read_text())
    config["linux"] = {"cgroupsPath": name}
    (sleeper_bundle / "config.json").write_text(json.dumps(config))
    with open(tmp_path / "out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(sleeper_bundle), "--detach", "c1"), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60)
    tops = hierarchies()
    assert tops
    sandbox = snapbox.sandbox_pid("c1")
    stubs = [int(p) for p in subprocess.run(["pgrep", "-P", str(sandbox)], capture_output=True,
                                            text=True).stdout.split()]
    assert stubs
    for top in tops:
        members = {int(p) for p in Path(top, name.strip("/"), "cgroup.procs").read_text().split()}
        assert {sandbox, *stubs} <= members, top
    assert "not supported" not in (tmp_path / "out").read_text()
    p = snapbox("run", "--bundle", str(sleeper_bundle), "--detach", "c2", check=False)  # as runc: one each
    assert p.returncode == 1 and "is in use by other processes" in p.stderr, p.stderr
    snapbox("delete", "--force", "c1")
    assert not any(Path(top, name.strip("/")).exists() for top in tops)
    assert not any(Path(top, name.strip("/").split("/")[0]).exists() for top in tops)


def test_features_describes_the_runtime_as_runc_does(snapbox):
    f = json.loads(snapbox("features").stdout)
    assert f["ociVersionMin"] == "1.0.0" and f["ociVersionMax"].startswith("1.")
    assert set(f["hooks"]) == {"prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                               "poststop"}
    assert "network" in f["linux"]["namespaces"] and f["linux"]["cgroup"]["v2"] is False


def test_kill_of_a_stopped_container_says_container_not_running(snapbox, images, tmp_path):
    out = tmp_path / "h.out"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(images / "hello"), "--detach", "h1"), stdout=f,
                       stderr=f, stdin=subprocess.DEVNULL, check=True, timeout=60)
    wait_for(lambda: json.loads(snapbox("state", "h1").stdout)["status"] == "stopped", what="hello to end")
    p = snapbox("kill", "h1", "TERM", check=False)
    assert p.returncode == 1 and "container not running" in p.stderr  # what containerd matches


def test_init_takes_from_outside_only_the_signals_it_handles_and_sigkill(snapbox, images, tmp_path):
    """As Linux treats the init of a PID namespace (and so runc and runsc): a shell without
    traps ignores SIGTERM and SIGINT from `kill`, and SIGKILL ends it."""
    start(snapbox, images, tmp_path, "s1")
    for sig in ("TERM", "INT", "HUP"):
        snapbox("kill", "s1", sig)
    time.sleep(0.5)
    assert json.loads(snapbox("state", "s1").stdout)["status"] == "running"
    waiter = subprocess.Popen(snapbox.cmd("wait", "s1"), stdout=subprocess.PIPE, text=True)
    snapbox("kill", "s1", "KILL")
    assert json.loads(waiter.communicate(timeout=20)[0])["exitStatus"] == 137


def test_warnings_go_to_the_log_when_there_is_one(snapbox, images, tmp_path):
    bundle = tmp_path / "caps"
    config = json.loads((images / "hello" / "config.json").read_text())
    config["process"]["capabilities"] = {"bounding": ["CAP_CHOWN", "CAP_NO_SUCH_THING"]}
    config["root"]["path"] = str(images / "hello" / "rootfs")
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    log = tmp_path / "runtime.log"
    p = snapbox("--log", str(log), "--log-format", "json", "run", "--bundle", str(bundle), "c1")
    assert p.stdout == "hello, world\n" and "warning" not in p.stderr  # the program's stderr is its own
    (entry,) = log_entries(log)
    assert entry["level"] == "warning" and "CAP_NO_SUCH_THING" in entry["msg"]
    p = snapbox("run", "--bundle", str(bundle), "c2")  # without --log: on stderr, as before
    assert ("snapbox: warning: unknown capability 'CAP_NO_SUCH_THING' in process.capabilities.bounding is "
            "ignored") in p.stderr


# What containerd's shim does: it is a child subreaper, runs `exec --detach --pid-file`,
# then waits for the pid in the file (reparented to it) and takes its exit status.
SHIM = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pid_file = sys.argv[1]
subprocess.run(sys.argv[2:], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
pid = int(open(pid_file).read())
while True:
    done, status = os.waitpid(-1, 0)
    if done == pid:
        print(os.waitstatus_to_exitcode(status))
        break
"""


def test_exec_detach_pid_file_leaves_a_process_that_exits_with_the_exec_code(snapbox, images, tmp_path):
    start(snapbox, images, tmp_path)
    pid_file = tmp_path / "exec.pid"
    shim = subprocess.run([sys.executable, "-c", SHIM, str(pid_file),
                           *snapbox.cmd("exec", "--detach", "--pid-file", str(pid_file), "s1", "sh", "-c",
                                        "sleep 0.5; exit 7")],
                          capture_output=True, text=True, timeout=60)
    assert shim.returncode == 0, shim.stderr
    assert shim.stdout == "7\n"  # its exit code; exec itself printed nothing, as runc's
    p = snapbox("exec", "--detach", "--pid-file", str(pid_file), "s1", "no-such-program", check=False)
    assert p.returncode == 1 and p.stderr.startswith("snapbox: error: ")


def test_checkpoint_and_restore_take_runcs_image_directory_and_criu_flags(snapbox, images, tmp_path):
    """runc's form, as containerd's shim passes it: --image-path is a directory (the image
    is DIR/snapbox.img), with --work-path and CRIU's flags beside it."""
    start(snapbox, images, tmp_path, "s1")
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    snapbox("checkpoint", "--image-path", str(image_dir), "--work-path", str(tmp_path / "work"),
            "--tcp-established", "--file-locks", "--leave-running", "s1")
    assert (image_dir / "snapbox.img").is_file()
    snapbox("delete", "--force", "s1")
    pid_file = tmp_path / "restored.pid"
    with open(tmp_path / "r.out", "w") as f:
        subprocess.run(snapbox.cmd("restore", "--image-path", str(image_dir), "--work-path", str(tmp_path / "work"),
                                   "-no-subreaper", "--pid-file", str(pid_file), "--detach", "r1"),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, check=True, timeout=60)
    assert int(pid_file.read_text()) == json.loads(snapbox("state", "r1").stdout)["pid"]
    assert json.loads(snapbox("state", "r1").stdout)["status"] == "running"
