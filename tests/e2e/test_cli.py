"""The command line beyond run/checkpoint/restore: exec, ps, events, wait, spec, do,
kill --all, --strace, --log, and the errors users see."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for


def sleeper(images: Path, tmp_path: Path, script: str = "echo started; sleep 100") -> Path:
    bundle = tmp_path / "sleeper"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": str(images / "busybox" / "rootfs")},
    }))
    return bundle


def start(snapbox, images, tmp_path, cid: str = "s1", *flags: str) -> Path:
    out = tmp_path / f"{cid}.out"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd(*flags, "run", "--bundle", str(sleeper(images, tmp_path)), "--detach", cid),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, check=True, timeout=60)
    wait_for(lambda: "started" in out.read_text(), what="the sleeper")
    return out


def exec_detached(snapbox, tmp_path: Path, cid: str, *command: str) -> int:
    """exec --detach; the process keeps the command's stdio, so it gets a file, not a pipe."""
    out = tmp_path / f"exec-{command[0]}.out"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("exec", "--detach", cid, *command), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60)
    return int(out.read_text().split()[0])


def test_exec_sees_the_containers_processes_and_files(snapbox, images, tmp_path):
    start(snapbox, images, tmp_path)
    p = snapbox("exec", "s1", "sh", "-c", "echo made > /tmp/x; ps -o pid,args; exit 3", check=False)
    assert p.returncode == 3
    assert "1 sleep 100" in p.stdout.replace("  ", " ")
    p = snapbox("exec", "--cwd", "/tmp", "--env", "GREETING=hi", "s1", "sh", "-c", "echo $GREETING $(pwd); cat x")
    assert p.stdout == "hi /tmp\nmade\n"
    p = snapbox("exec", "--user", "1000:1000", "s1", "id")
    assert p.stdout.startswith("uid=1000 gid=1000")
    pid = exec_detached(snapbox, tmp_path, "s1", "sleep", "50")
    procs = json.loads(snapbox("ps", "--format", "full", "s1").stdout)
    assert {(x["pid"], x["cmd"]) for x in procs} == {(1, "sleep 100"), (pid, "sleep 50")}
    # runc's contract (what containerd's `ctr task ps` reads): the host pids, each a live process.
    host_pids = json.loads(snapbox("ps", "--format", "json", "s1").stdout)
    assert sorted(host_pids) == sorted(x["host_pid"] for x in procs) and all(
        os.path.exists(f"/proc/{p}") for p in host_pids) and len(set(host_pids)) == 2
    table = snapbox("ps", "s1").stdout.splitlines()
    assert table[0].split() == ["UID", "PID", "PPID", "STAT", "THR", "CMD"] and len(table) == 3


def test_exec_forwards_signals_and_reports_them(snapbox, images, tmp_path):
    start(snapbox, images, tmp_path)
    proc = subprocess.Popen(snapbox.cmd("exec", "s1", "sleep", "60"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(x["cmd"] == "sleep 60" for x in json.loads(snapbox("ps", "--format", "full", "s1").stdout)),
             what="the exec'd sleep")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM


def test_events_stats_wait_and_kill_all(snapbox, images, tmp_path):
    start(snapbox, images, tmp_path)
    exec_detached(snapbox, tmp_path, "s1", "sleep", "50")
    event = json.loads(snapbox("events", "--stats", "s1").stdout)
    assert event["type"] == "stats" and event["id"] == "s1"
    assert event["data"]["pids"]["current"] == 2 and event["data"]["memory"]["usage"] > 0
    waiter = subprocess.Popen(snapbox.cmd("wait", "s1"), stdout=subprocess.PIPE, text=True)
    snapbox("kill", "--all", "s1", "KILL")
    assert json.loads(waiter.communicate(timeout=20)[0]) == {"id": "s1", "exitStatus": 137}
    p = snapbox("ps", "s1", check=False)
    assert p.stderr == 'snapbox: error: cannot list processes of container "s1" in state stopped\n'


def test_strace_logs_decoded_syscalls(snapbox, images, tmp_path):
    log = tmp_path / "debug.log"
    p = snapbox("--strace", "--debug-log", str(log), "run", "--bundle", str(images / "hello"), "h1")
    assert p.stdout == "hello, world\n"
    text = log.read_text()
    assert 'writev(1, ["hello, world\\n"], 2) = 13' in text  # musl writes stdout with writev
    assert "ioctl(1, 0x5413, " in text and "= -1 ENOTTY (Inappropriate ioctl for device)" in text
    assert "exit_group(0) = ?" in text


def test_log_file_and_json_format(snapbox, tmp_path):
    log = tmp_path / "runtime.log"
    p = snapbox("--log", str(log), "--log-format", "json", "state", "nope", check=False)
    assert p.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"] == 'container "nope" does not exist'


def test_an_unknown_network_mode_is_refused(snapbox):
    p = snapbox("--network", "bridge", "list", check=False)
    assert p.returncode == 2
    assert p.stderr.startswith("snapbox: error: Invalid value for '--network': 'bridge' is not one of ")
    assert len(p.stderr.splitlines()) == 1


def test_spec_writes_a_usable_default(snapbox, images, tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    snapbox("spec", "--bundle", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"] and config["root"]["path"] == "rootfs"
    p = snapbox("spec", "--bundle", str(bundle), check=False)
    assert p.stderr == f"snapbox: error: {bundle}/config.json already exists\n"
    os.symlink(images / "busybox" / "rootfs", bundle / "rootfs")
    config["process"]["args"] = ["/bin/sh", "-c", "echo spec works"]
    (bundle / "config.json").write_text(json.dumps(config))
    assert snapbox("run", "--bundle", str(bundle), "sp").stdout == "spec works\n"


def test_do_runs_a_static_program_from_the_host_root(snapbox, images, tmp_path):
    busybox = images / "busybox" / "rootfs" / "bin" / "busybox"
    p = subprocess.run(snapbox.cmd("do", str(busybox), "sh", "-c", "pwd; echo $MARK; echo x > /tmp/y && cat /tmp/y"),
                       capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, MARK="kept"), timeout=60)
    assert p.stdout == f"{tmp_path}\nkept\nx\n"
    assert not Path("/tmp/y").exists() or Path("/tmp/y").read_text() != "x\n"
    p = snapbox("do", str(busybox), "sh", "-c", "exit 4", check=False)
    assert p.returncode == 4
    p = snapbox("do", str(tmp_path / "missing"), check=False)
    assert p.returncode == 1
    assert p.stderr == f"snapbox: error: executable {tmp_path}/missing not found in the sandbox\n"


def test_an_attached_do_ends_with_its_command(snapbox, images, tmp_path):
    """As `runsc do`: kill the command and its sandbox goes too, program and all."""
    busybox = images / "busybox" / "rootfs" / "bin" / "busybox"
    command = subprocess.Popen(snapbox.cmd("do", "--id", "d1", str(busybox), "sleep", "100"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (snapbox.root / "d1" / "state.json").exists()
             and json.loads(snapbox("state", "d1").stdout)["status"] == "running", what="the sandbox")
    sandbox = snapbox.sandbox_pid("d1")
    command.kill()
    command.wait()
    wait_for(lambda: not running(sandbox), timeout=10, what="the sandbox to end")


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_nice_values_as_linux_keeps_them(snapbox, tmp_path):
    """setpriority/getpriority through the host's coreutils and util-linux, under `do` and
    natively: the same answers (as root: lowering nice is allowed)."""
    script = ('nice; nice -n 7 nice; nice -n -3 nice; nice -n 5 sh -c \'cut -d" " -f18,19 /proc/self/stat\'; '
              'sh -c \'renice -n 4 $$ >/dev/null; nice\'; renice -n 2 -p 999999 2>/dev/null || echo failed')
    native = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30).stdout
    assert native == "0\n7\n-3\n25 5\n4\nfailed\n"
    assert snapbox("do", "sh", "-c", script).stdout == native


ADVICE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
    r = libc.syscall(*args)
    return r if r >= 0 else -ctypes.get_errno()
f, out = os.open("/etc/hostname", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)
r, w = os.pipe()
print(call(187, f, 0, 4096), call(187, r, 0, 10), call(187, 999, 0, 10), call(187, out, 0, 10))  # readahead
print(call(221, f, 0, 0, 3), call(221, r, 0, 0, 3), call(221, f, 0, 0, 9), call(221, 999, 0, 0, 0),
      call(221, f, 0, ctypes.c_long(-5), 0))  # fadvise64
"""


def test_readahead_and_fadvise_check_their_arguments_as_linux(snapbox, tmp_path):
    native = subprocess.run([sys.executable, "-c", ADVICE], capture_output=True, text=True, timeout=30).stdout
    assert native == "0 -22 -9 -9\n0 -29 -22 -9 -22\n"
    assert snapbox("do", sys.executable, "-c", ADVICE).stdout == native


def test_host_and_domain_names_are_the_sandboxs_own(snapbox):
    """sethostname and setdomainname as in a UTS namespace of its own (`unshare -u`
    natively): root may change them, another user may not."""
    script = ("domainname; domainname example.org; domainname; hostname h1; hostname; "
              "setpriv --reuid=65534 domainname x 2>/dev/null || echo refused")
    native = subprocess.run(["unshare", "-u", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert native.stdout == "(none)\nexample.org\nh1\nrefused\n", native.stderr
    assert snapbox("do", "sh", "-c", script).stdout == native.stdout


def test_do_keeps_the_hosts_host_name(snapbox):
    """As `runsc do`: the host's name, which the host's /etc/hosts (the sandbox's, under
    `do`) resolves."""
    script = "import socket; n = socket.gethostname(); print(n); print(socket.gethostbyname(n) != '')"
    assert snapbox("do", sys.executable, "-c", script).stdout == f"{socket.gethostname()}\nTrue\n"


def test_the_program_may_be_a_script(snapbox, images, tmp_path):
    """`do SCRIPT` and a bundle whose process.args[0] is a script run its interpreter, as
    execve(2) does (a version manager's `python3` is such a script), nested too."""
    busybox = images / "busybox" / "rootfs" / "bin" / "busybox"
    script = tmp_path / "greet"
    script.write_text(f"#!{busybox} sh\necho hello from $0 with $1\n")
    script.chmod(0o755)
    outer = tmp_path / "outer"
    outer.write_text(f"#!{script}\n")
    outer.chmod(0o755)
    assert snapbox("do", str(script), "one").stdout == f"hello from {script} with one\n"
    assert snapbox("do", str(outer), "two").stdout == f"hello from {script} with {outer}\n"
    bundle = tmp_path / "b"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy(busybox, bundle / "rootfs" / "bin" / "busybox")
    (bundle / "rootfs" / "run.sh").write_text("#!/bin/busybox sh\necho in the bundle $1\n")
    (bundle / "rootfs" / "run.sh").chmod(0o755)
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                                    "process": {"args": ["/run.sh", "x"], "cwd": "/"}}))
    assert snapbox("run", "--bundle", str(bundle), "s1").stdout == "in the bundle x\n"
    missing = tmp_path / "orphan"
    missing.write_text("#!/no/such/interpreter\n")
    missing.chmod(0o755)
    p = snapbox("do", str(missing), check=False)
    assert (p.returncode, p.stderr) == (1, f"snapbox: error: interpreter /no/such/interpreter of {missing} "
                                           "not found in the sandbox\n")


def test_an_interactive_run_on_a_terminal(snapbox, images, tmp_path):
    """Driven through tmux: what is typed is echoed and read, Ctrl-C reaches the program."""
    import shutil
    import time

    assert shutil.which("tmux"), "tmux is installed by scripts/setup"
    bundle = tmp_path / "tty"
    bundle.mkdir()
    script = ("[ -t 0 ] && echo on-a-tty; stty size; read line; echo got:$line; "
              "trap 'echo caught INT' INT; sleep 30 & wait; echo after")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"terminal": True, "args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": str(images / "busybox" / "rootfs")},
    }))
    session = f"snapbox-test-{os.getpid()}"
    command = " ".join(snapbox.cmd("run", "--bundle", str(bundle), "tty1")) + "; echo EXIT=$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                              text=True).stdout

    try:
        wait_for(lambda: "on-a-tty" in screen(), timeout=30, what="the program on the terminal")
        # the terminal's size, as stty sees it inside (stty runs after the echo: wait for it too)
        wait_for(lambda: "30 100" in screen(), timeout=20, what="stty's output")
        subprocess.run(["tmux", "send-keys", "-t", session, "hello there", "Enter"], check=True)
        wait_for(lambda: "got:hello there" in screen(), timeout=20, what="the line read back")
        assert "hello there\n" in screen()  # echoed as typed
        time.sleep(0.3)
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        wait_for(lambda: "EXIT=" in screen(), timeout=20, what="the program to end")
        text = screen()
        assert "caught INT" in text and "after" in text and "EXIT=0" in text
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
