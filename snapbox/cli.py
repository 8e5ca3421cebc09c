"""The snapbox command line: runc-style commands over containers and their images."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import signal
import socket
import sys
import termios
import traceback

import click

from snapbox.errors import Cancelled, SnapboxError

_DEBUG = False
_LOG: tuple[str, str] | None = None  # (--log file, --log-format)


IMAGE_IN_DIRECTORY = "snapbox.img"


def _image_file(path: str) -> str:
    """runc's form of --image-path, a directory (containerd makes one): the image is a file in it."""
    return os.path.join(path, IMAGE_IN_DIRECTORY) if os.path.isdir(path) else path


def _criu_options(command):
    """runc's options for CRIU, which containerd may pass to checkpoint and restore: accepted,
    and meaningless here (the sentry saves the state, not CRIU; its TCP connections, file
    locks and terminal are always part of the image)."""
    for flag in ("--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks", "--auto-dedup",
                 "--lazy-pages", "--no-subreaper", "--no-pivot"):
        command = click.option(flag, is_flag=True, hidden=True, expose_value=False)(command)
    for opt in ("--work-path", "--manage-cgroups-mode", "--empty-ns", "--status-fd", "--page-server"):
        command = click.option(opt, multiple=True, hidden=True, expose_value=False)(command)
    return command


def _signal_number(value: str) -> int:
    """SIGTERM, TERM or 15 -> 15."""
    v = value.strip().upper()
    if v.isdigit():
        n = int(v)
    else:
        name = v if v.startswith("SIG") else "SIG" + v
        try:
            n = int(signal.Signals[name])
        except KeyError:
            raise SnapboxError(f"unknown signal {value!r}") from None
    if not 1 <= n <= 64:
        raise SnapboxError(f"signal {value!r} is out of range (1-64)")
    return n


def _go_style(command: click.Command, args: list[str]) -> list[str]:
    """Go's flag parsing (runc's) takes a long option with one dash too, and containerd
    passes some that way (`restore -no-subreaper`): `-name[=v]` is `--name[=v]` where
    `--name` is one of the command's options, up to the first argument of a command that
    stops parsing there (the group at its command's name, `do` and `exec` at the program)."""
    takes_value = {opt: not (param.is_flag or param.count) for param in command.params
                   if isinstance(param, click.Option) for opt in param.opts + param.secondary_opts}
    out: list[str] = []
    while len(out) < len(args) and args[len(out)] != "--":
        arg = args[len(out)]
        name, eq, _ = arg.partition("=")
        if len(name) > 2 and name[0] == "-" and name[1] != "-" and "-" + name in takes_value:
            arg, name = "-" + arg, "-" + name
        out.append(arg)
        if takes_value.get(name) and not eq and len(out) < len(args):
            out.append(args[len(out)])
        elif not arg.startswith("-") and not command.allow_interspersed_args:
            break
    return out + args[len(out):]


class _Command(click.Command):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _go_style(self, args))


class _Group(click.Group):
    command_class = _Command

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _go_style(self, args))

    def format_epilog(self, ctx, formatter):
        formatter.write_paragraph()
        formatter.write_text("Run 'snapbox COMMAND --help' for a command's options.")


@dataclasses.dataclass
class _Context:
    root: str
    options: object  # runtime.container.Options


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Directory for container state (default: /var/run/snapbox as root, "
                   "$XDG_RUNTIME_DIR/snapbox otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.option("--debug-log", type=click.Path(dir_okay=False), default=None,
              help="The sandbox's log file (default: <root>/<id>/sandbox.log).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None,
              help="Also append this command's warnings and errors to FILE.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Format of --log and of the sandbox's log.")
@click.option("--strace", is_flag=True,
              help="Log every application syscall, with decoded arguments and results, to the sandbox's log.")
@click.option("--network", type=click.Choice(["sandbox", "host", "none"]), default=None,
              help="The sandbox's network. sandbox (the default for bundles): a network namespace of its own "
                   "(the one the bundle's config names, else one snapbox makes, with a veth pair to this host: "
                   "sbxN here at 10.213.x.(4N+1) and fd0a:d5:213::(4N+1), eth0 inside; what it sends further "
                   "leaves from this host, as "
                   "masqueraded); host (the default for `do`): this host's "
                   "stack; none: loopback only. Traffic between the sandbox's own sockets stays inside it "
                   "whatever the mode, and is checkpointed whole; restore uses the image's mode.")
@click.option("--systemd-cgroup", is_flag=True, hidden=True)  # runc's flags that containerd and Docker pass:
@click.option("--rootless", default=None, hidden=True)  # accepted, and meaningless for a sandbox whose
@click.option("--criu", default=None, hidden=True)  # kernel is its own (no cgroups, no CRIU)
@click.version_option(package_name="snapbox", prog_name="snapbox")
@click.pass_context
def cli(ctx: click.Context, root: str | None, debug: bool, debug_log: str | None, log_file: str | None,
        log_format: str, strace: bool, network: str, systemd_cgroup: bool, rootless: str | None,
        criu: str | None) -> None:
    """snapbox: run Linux programs in a sandbox whose whole state can be checkpointed,
    restored and moved.

    A sandbox runs the program natively under ptrace; a user-space kernel (the sentry)
    emulates every system call and owns every byte of the program's state.
    """
    global _DEBUG, _LOG
    _DEBUG = debug
    _LOG = (log_file, log_format) if log_file else None
    from snapbox.runtime.container import Options, default_root

    ctx.obj = _Context(os.path.abspath(root or default_root()),
                       Options(debug_log=debug_log, log_format=log_format, strace=strace, network=network, warn=warn))


def _container(obj: _Context, cid: str):
    from snapbox.runtime.container import Container

    return Container.load(obj.root, cid)


def _attach(c) -> None:
    """Wait for an attached sandbox, forwarding signals; exit with the program's code."""
    from snapbox.runtime import control
    from snapbox.runtime.control import exit_code

    def forward(signum, frame):
        # Keyboard signals go to the foreground process group, as a terminal sends them.
        foreground = signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)
        with contextlib.suppress(SnapboxError):  # the sandbox is gone already
            control.call(c.control_path, "kill", timeout=5, signal=signum, foreground=foreground)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH):
        signal.signal(sig, forward)
    status = c.wait()
    c.delete(force=True)
    sys.exit(exit_code(status))


def _snapshot_option(f):
    return click.option(
        "--snapshot-to", default=None, metavar="IMAGE", type=click.Path(dir_okay=False),
        help="Let the program choose when it is checkpointed: writing /proc/snapbox/checkpoint, once it "
             "is ready, writes the sandbox's image to IMAGE while it runs on; the write returns there and "
             "in every sandbox restored from IMAGE, where /proc/snapbox/restored counts the restores.")(f)


def _publish_option(f):
    return click.option(
        "--publish", "-p", multiple=True, metavar="[IP:]HOSTPORT:PORT[/udp]",
        help="Publish the sandbox's TCP (or, with /udp, UDP) port PORT on this host at IP:HOSTPORT "
             "(repeatable; IPv6 in brackets). Connections there reach the sandbox's listener on PORT as "
             "if made to its own address, whatever --network is (with none, they are all that reaches "
             "it); while nothing in the sandbox listens on PORT they are refused. Datagrams there reach "
             "the sandbox's socket on PORT, and its replies leave from IP:HOSTPORT. Without IP, every "
             "address of this host, as Docker's -p: name 127.0.0.1 to keep it local. HOSTPORT 0 takes a "
             "free port (`state` shows which). Images keep their published ports: a restore publishes "
             "them again, unless it has -p of its own, which replace them (as podman's restore "
             "--publish).")(f)


def _options(obj: _Context, snapshot_to: str | None, publish: tuple[str, ...] = ()):
    """The sandbox options, with --snapshot-to checked and made absolute and --publish checked."""
    from snapbox.runtime.network import parse_publish

    options = obj.options
    for spec in publish:
        parse_publish(spec)
    if publish:
        options = dataclasses.replace(options, publish=tuple(publish))
    if snapshot_to is None:
        return options
    path = os.path.abspath(snapshot_to)
    if not os.path.isdir(os.path.dirname(path)):
        raise click.UsageError(f"--snapshot-to {snapshot_to}: no directory {os.path.dirname(path)}")
    return dataclasses.replace(options, snapshot_to=path)


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(),
              help="Path to the OCI bundle (a directory holding config.json and the rootfs).")
@click.option("--detach", "-d", is_flag=True,
              help="Return once the program runs; it keeps this command's stdio.")
@_snapshot_option
@_publish_option
@click.argument("container_id")
@click.pass_obj
def run(obj: _Context, bundle: str, detach: bool, snapshot_to: str | None, publish: tuple[str, ...],
        container_id: str) -> None:
    """Create and start a container.

    Without --detach, waits for the program, forwards SIGINT, SIGTERM and SIGHUP to it,
    deletes the container and exits with the program's exit code (128+N if it was
    killed by signal N).
    """
    from snapbox.runtime.container import Container

    c = Container.create(obj.root, container_id, bundle, start=True, options=_options(obj, snapshot_to, publish))
    if not detach:
        _attach(c)


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(),
              help="Path to the OCI bundle.")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the sandbox process's pid to this file.")
@click.option("--console-socket", type=click.Path(dir_okay=False), default=None,
              help="A unix socket to send the master of the program's new terminal to (as runc does).")
@_snapshot_option
@_publish_option
@click.argument("container_id")
@click.pass_obj
def create(obj: _Context, bundle: str, pid_file: str | None, console_socket: str | None,
           snapshot_to: str | None, publish: tuple[str, ...], container_id: str) -> None:
    """Create a container: its program is loaded but does not run until 'start'.
    OCI hooks createRuntime, prestart and createContainer run now; startContainer and
    poststart at start; poststop at delete."""
    from snapbox.runtime.container import Container

    Container.create(obj.root, container_id, bundle, start=False, options=_options(obj, snapshot_to, publish),
                     pid_file=pid_file, console_socket=console_socket)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def start(obj: _Context, container_id: str) -> None:
    """Start a created container."""
    _container(obj, container_id).start()


@cli.command()
@click.argument("container_id")
@click.pass_obj
def pause(obj: _Context, container_id: str) -> None:
    """Stop every task of a running container where it is."""
    _container(obj, container_id).pause()


@cli.command()
@click.argument("container_id")
@click.pass_obj
def resume(obj: _Context, container_id: str) -> None:
    """Let a paused container run again."""
    _container(obj, container_id).resume()


@cli.command()
@click.option("--all", "-a", "all_processes", is_flag=True, help="Signal every process, not only init.")
@click.argument("container_id")
@click.argument("signal_name", metavar="[SIGNAL]", default="SIGTERM")
@click.pass_obj
def kill(obj: _Context, all_processes: bool, container_id: str, signal_name: str) -> None:
    """Send a signal (name or number; default SIGTERM) to the container's init process."""
    _container(obj, container_id).kill(_signal_number(signal_name), all_processes=all_processes)


@cli.command()
@click.option("--force", "-f", is_flag=True, help="Kill the container first if it is still alive.")
@click.argument("container_id")
@click.pass_obj
def delete(obj: _Context, container_id: str, force: bool) -> None:
    """Delete a stopped container (or any, with --force)."""
    from snapbox.runtime.container import Container

    try:
        c = Container.load(obj.root, container_id)
    except SnapboxError:
        if force and not os.path.exists(os.path.join(obj.root, container_id)):
            return  # nothing to delete: --force makes that a success, as with runc
        raise
    c.delete(force=force)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def state(obj: _Context, container_id: str) -> None:
    """Print the container's state as OCI state JSON."""
    click.echo(json.dumps(_container(obj, container_id).oci_state(), indent=2))


@cli.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def list_(obj: _Context, fmt: str) -> None:
    """List the containers under --root."""
    from snapbox.runtime.container import Container

    states = [c.oci_state() for c in Container.list(obj.root)]
    if fmt == "json":
        click.echo(json.dumps(states, indent=2))
        return
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"]) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


@cli.command()
@click.option("--image-path", required=True, type=click.Path(),
              help="Where to write the image; - writes it to stdout (a pipe or a file); a directory "
                   "(runc's form, as containerd passes it): the image is DIR/snapbox.img.")
@click.option("--leave-running", is_flag=True, help="Keep the container running afterwards.")
@click.option("--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True,
              help="How memory pages are stored: zstd, or none (pages laid out page-aligned).")
@click.option("--store-file-pages", is_flag=True,
              help="Store the pages of mapped host files (libraries, executables) in the image "
                   "instead of references to the files, so it restores where those files differ.")
@click.option("--pre-dump", is_flag=True,
              help="Write memory only, while the container runs on (as CRIU's pre-dump): the "
                   "parent of a later --parent-path image. Cannot be restored by itself.")
@click.option("--parent-path", type=click.Path(dir_okay=False), default=None,
              help="Write only the pages changed since PARENT, this container's last pre-dump "
                   "(as runc's --parent-path). Restore reads the chain, and refuses it if a "
                   "parent is missing or has changed.")
@_criu_options
@click.argument("container_id")
@click.pass_obj
def checkpoint(obj: _Context, image_path: str, leave_running: bool, compression: str,
               store_file_pages: bool, pre_dump: bool, parent_path: str | None, container_id: str) -> None:
    """Save the container's whole state to an image.

    The container stops afterwards unless --leave-running. The image is written under a
    temporary name and renamed into place when complete: an interrupted checkpoint leaves
    nothing under IMAGE_PATH, and a failed one leaves the container running. On a
    terminal, progress is shown on stderr.

    Read-only pages of host files (the program, its libraries) are stored as references:
    path, size, mtime and a SHA-256 of the content. Restore reads the files again and
    refuses, naming the file, if one changed; --store-file-pages avoids that.

    Incremental images: `--pre-dump --image-path P1` writes memory while the container
    runs; `--parent-path P1 --image-path P2` then writes only what changed since (and
    may itself be a --pre-dump, for a longer chain). Written pages are found by
    write-protection (userfaultfd in async mode with PAGEMAP_SCAN, Linux 6.7 and later:
    the host kernel notes each first write to a page, at no cost to the program until
    then), or where that is not to be had (an older kernel, userfaultfd(2) filtered out)
    by comparing a BLAKE2b digest of every page with the parent's; `inspect` says which.
    """
    image_fd = None
    if image_path == "-":
        if os.isatty(1):
            raise SnapboxError("refusing to write an image to a terminal (redirect stdout)")
        image_fd = 1
    else:
        image_path = _image_file(image_path)
    summary = _container(obj, container_id).checkpoint(
        image_path, leave_running=leave_running, compress=compression == "zstd",
        image_fd=image_fd, progress_fd=2 if os.isatty(2) else None, store_file_pages=store_file_pages,
        pre_dump=pre_dump, parent_path=parent_path)
    if summary.get("interrupted"):
        print("snapbox: the checkpoint was complete when interrupted: the image is written"
              + ("" if leave_running or pre_dump else " and the container stopped"), file=sys.stderr)
    _report_connections(summary.get("connections") or [])


def _report_connections(connections: list) -> None:
    """One line on stderr for each of the sandbox's TCP connections through the host, and
    what the checkpoint or restore did with it."""
    for c in connections:
        where = ":".join(map(str, c["local"]))
        if c["remote"]:
            where += " <-> " + ":".join(map(str, c["remote"]))
        print(f"snapbox: {c['kind']} {c['role']} {where}: {c['fate']}", file=sys.stderr)


@cli.command()
@click.option("--to", "dest", required=True, metavar="DEST",
              help="tcp://HOST:PORT (a receiver started with `snapbox restore --listen HOST:PORT ID`; "
                   "not encrypted) or exec:COMMAND (run COMMAND, e.g. `ssh HOST snapbox restore "
                   "--image-path - ID`, and speak to it over its stdin and stdout; encrypted if "
                   "COMMAND is ssh).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="The secret the receiver was given with its own --token-file.")
@click.option("--max-rounds", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Rounds of copying while the program runs before the last, paused one.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.argument("container_id")
@click.pass_obj
def migrate(obj: _Context, dest: str, token_file: str | None, max_rounds: int, as_json: bool,
            container_id: str) -> None:
    """Move a running container to another snapbox, live.

    Round 1 sends all of its memory while it runs; each later round sends the pages
    written since the one before (found by write-protection where the host kernel has
    it, Linux 6.7 and later; else by page digests), until a round is small (1 MB or
    25 ms), rounds stop shrinking, or --max-rounds. Then the container is paused, the
    last pages and its kernel state are sent, and once the receiver says the program
    runs there, it is deleted here. The receiver loads each round as it arrives, so
    the pause lasts about as long as the last round, not the whole copy.
    Whatever fails before that (a refusal, a broken connection, Ctrl-C), it goes on
    running here, and this command fails with one line saying what happened. Each
    round is shown on a terminal (stderr); the summary says how long the program was
    frozen and how written pages were found.
    """
    from snapbox.runtime.migrate import print_summary, read_token

    token = read_token(token_file)
    report = (lambda line: print(f"snapbox: {line}", file=sys.stderr)) if os.isatty(2) and not as_json else None
    summary = _container(obj, container_id).migrate(dest, token=token, max_rounds=max_rounds, report=report)
    print_summary(summary, as_json)
    if not as_json:
        _report_connections(summary.connections)


@cli.command()
@click.option("--bundle", "-b", default=None, type=click.Path(),
              help="Path to the OCI bundle whose rootfs the program runs on (default: the one the "
                   "image remembers).")
@click.option("--image-path", default=None, type=click.Path(),
              help="The image to restore; - reads it from stdin (an image, or a migration stream "
                   "from `migrate --to exec:...`, answered on stdout); a directory: DIR/snapbox.img, "
                   "as checkpoint writes it there.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Receive the container from `snapbox migrate --to tcp://HOST:PORT` (one "
                   "migration, then this command goes on as restore does). The stream is not "
                   "encrypted: listen on loopback (the default host) or a network you trust, or "
                   "migrate over ssh with --to exec:.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="With --listen: accept only a migration that presents the secret in this file "
                   "(`migrate --token-file` with the same file). Required unless the address is loopback.")
@click.option("--detach", "-d", is_flag=True,
              help="Return once the program runs again; it keeps this command's stdio.")
@click.option("--lazy", is_flag=True,
              help="Start the program before its memory is read: each part of the image's memory is "
                   "loaded (and checked) when the program first needs it, and all of it in the "
                   "background meanwhile. Whoever opens the image to change it meanwhile waits "
                   "until all of it is in. A part that turns out corrupt ends the sandbox as if killed "
                   "by SIGKILL, its log saying why (restore itself has succeeded by then). "
                   "Ignored with --image-path -.")
@click.option("--working-set", type=click.Path(dir_okay=False), default=None,
              help="A working set of the image (as REAP keeps for serverless functions): with --lazy, "
                   "the memory this file names is loaded first, on every CPU, before the program runs, "
                   "and the rest as usual. If there is no file there yet (or it is of an older image), "
                   "this restore records one: the memory the program touches until, after a syscall "
                   "has returned, all its processes wait (a server done with its first request). "
                   "A file that is not a working set is refused, never written over.")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the sandbox process's pid here (it exits with the program's status), as create does.")
@click.option("--console-socket", type=click.Path(dir_okay=False), default=None,
              help="With process.terminal: send the new terminal's master to this AF_UNIX socket, as create does.")
@_publish_option
@_snapshot_option
@_criu_options
@click.argument("container_id")
@click.pass_obj
def restore(obj: _Context, bundle: str, image_path: str | None, listen: str | None, token_file: str | None,
            detach: bool, lazy: bool, working_set: str | None, pid_file: str | None, console_socket: str | None,
            publish: tuple[str, ...], snapshot_to: str | None, container_id: str) -> None:
    """Create a container from an image and start it where the checkpoint left it.

    The image's CPU features are checked against this host before anything else is read,
    and the whole image is checked before anything starts (with --lazy: all but the
    contents of memory). The restored program's stdio is this command's (with
    --image-path -, its stdin is what follows the image).

    With --listen, or a migration stream on stdin, the container arrives from `snapbox
    migrate` instead; over stdin (`--to exec:`), the program's stdin is /dev/null and its
    output goes to this command's stderr, stdout carrying the answers to the source.
    """
    from snapbox.runtime.container import Container

    if (image_path is None) == (listen is None):
        raise SnapboxError("restore needs one of --image-path and --listen")
    if listen is not None or (image_path == "-" and _stdin_is_migration()):
        if publish:
            raise SnapboxError("--publish is for a restore from an image: a migration keeps the ports "
                               "its container published")
        _receive(obj, bundle, listen, token_file, detach, container_id)
        return
    if image_path == "-":
        if os.isatty(0):
            raise SnapboxError("refusing to read an image from a terminal (redirect stdin)")
        source = "-"
    else:
        image_path = _image_file(image_path)
        if not os.path.isfile(image_path):
            raise SnapboxError(f"image {image_path} does not exist")
        source = os.path.abspath(image_path)
    if bundle is None:
        if source == "-":
            raise SnapboxError("restore from stdin needs --bundle")
        bundle = _bundle_of_image(obj, source, container_id)
    options = _options(obj, snapshot_to, publish)
    if working_set is not None:
        working_set = os.path.abspath(working_set)
        if not os.path.isdir(os.path.dirname(working_set)):
            raise click.UsageError(f"--working-set: no directory {os.path.dirname(working_set)}")
        options = dataclasses.replace(options, working_set=working_set)
    c = Container.create(obj.root, container_id, bundle, restore_image=source, lazy=lazy,
                         options=options, pid_file=pid_file, console_socket=console_socket)
    _report_connections(c.connections)
    if not detach:
        _attach(c)


def _stdin_is_migration() -> bool:
    """Whether stdin starts with a migration stream's magic (looked at, not read: an
    image on stdin is the sandbox process's to read)."""
    from snapbox.runtime.migrate import MAGIC

    return _peek(0, len(MAGIC)) == MAGIC


def _peek(fd: int, n: int) -> bytes:
    """The first `n` bytes waiting on `fd` without taking them: pread of a file, MSG_PEEK
    of a socket, tee(2) of a pipe into a scratch pipe."""
    import ctypes
    import select
    import stat

    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.pread(fd, n, os.lseek(fd, 0, os.SEEK_CUR))
    if stat.S_ISSOCK(mode):
        import socket as socket_module

        with socket_module.socket(fileno=os.dup(fd)) as s:
            return s.recv(n, socket_module.MSG_PEEK)
    if not stat.S_ISFIFO(mode):
        return b""
    got = b""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(1000):
        r, w = os.pipe()
        try:
            copied = libc.tee(fd, w, n, 0)  # waits for the writer; 0 at the end of the input
            got = os.read(r, n) if copied > 0 else b""
        finally:
            os.close(r)
            os.close(w)
        if copied <= 0 or len(got) >= n:
            break
        select.select([], [], [], 0.01)  # part of it so far: let the writer go on
    return got


def _receive(obj: _Context, bundle: str | None, listen: str | None, token_file: str | None, detach: bool,
             cid: str) -> None:
    """The receiving end of `snapbox migrate`: over --listen's one connection, or stdin
    and stdout."""
    import socket as socket_module

    from snapbox.runtime.container import Container
    from snapbox.runtime.migrate import Channel, read_token, receive

    token = read_token(token_file)
    if bundle is not None and not os.path.isfile(os.path.join(bundle, "config.json")):
        raise SnapboxError(f"bundle {bundle} has no config.json")
    started: list = []

    def start(image: str, memory: tuple[str, str] | None):
        chosen = bundle or _bundle_of_image(obj, image, cid)
        c = Container.create(obj.root, cid, chosen, restore_image=image, options=obj.options, memory=memory)
        started.append(c)
        return c

    def check_bundle() -> None:
        if bundle is not None and not os.path.isdir(bundle):
            raise SnapboxError(f"bundle {bundle} does not exist")

    if listen is None:
        # Answers on stdout; the program's output goes to stderr, its stdin is /dev/null.
        stream, answers = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        with stream, answers:
            c = receive(Channel(stream, answers, "the source"), obj.root, cid, token, start, check_bundle)
        detach = True
    else:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise SnapboxError(f"--listen {listen}: expected HOST:PORT")
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        if not token and not loopback:
            raise SnapboxError(f"--listen {listen}: a non-loopback address needs --token-file")
        try:
            server = socket_module.create_server((host, int(port)), family=socket_module.AF_INET6 if ":" in host
                                                 else socket_module.AF_INET)
        except OSError as e:
            raise SnapboxError(f"cannot listen on {listen} ({e.strerror})") from None
        print(f"snapbox: listening on {host}:{server.getsockname()[1]} for container {cid}", file=sys.stderr)
        with server:
            conn, _ = server.accept()
        with conn, conn.makefile("rb") as reader, conn.makefile("wb") as writer:
            c = receive(Channel(reader, writer, "the source"), obj.root, cid, token, start, check_bundle)
    _report_connections(c.connections)
    if not detach:
        _attach(c)


def _bundle_of_image(obj: _Context, image: str, cid: str) -> str:
    """The bundle an image was taken with (its config.json is in the header)."""
    from snapbox.runtime.container import Container
    from snapbox.state.image import ImageReader

    with open(image, "rb") as f:
        config = ImageReader(f).meta.get("bundle_config")
    if not isinstance(config, dict):
        raise SnapboxError(f"image {image} does not name its bundle: pass --bundle")
    if os.path.exists(os.path.join(obj.root, cid)):
        raise SnapboxError(f'container "{cid}" already exists')
    return Container.owned_bundle(obj.root, cid, config)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON, for scripts.")
@click.argument("image_path", type=click.Path(dir_okay=False))
def inspect(image_path: str, as_json: bool) -> None:
    """Describe an image without running it: host and CPU, processes with their state,
    open files and memory, object counts, and section sizes. The whole image is read, so
    a corrupt one is reported as such."""
    from snapbox.runtime.inspect import describe, render

    try:
        f = open(image_path, "rb") if image_path != "-" else os.fdopen(0, "rb", closefd=False)
    except OSError as e:
        raise SnapboxError(f"cannot open image {image_path} ({e.strerror})") from None
    with f:
        info = describe(f)
    click.echo(json.dumps(info, indent=2) if as_json else render(info))


@cli.group(cls=_Group)
def pool() -> None:
    """Clone pools: sandboxes restored from one image ahead of time and held before their
    first instruction, each handed out as a container when taken (a serverless platform's
    warm starts). Make the image at the point the program is ready, e.g. with
    `--snapshot-to` (the program writes /proc/snapbox/checkpoint); after a take,
    /proc/snapbox/restored tells it that it was restored, so it can reseed or reconnect.
    Not to be confused with `snapbox warm`, which keeps the CLI's interpreter warm."""


@pool.command(name="create")
@click.option("--image", "image", required=True, type=click.Path(dir_okay=False),
              help="The image every clone is restored from.")
@click.option("--bundle", "-b", type=click.Path(file_okay=False), default=None,
              help="The bundle to restore with (default: the one recorded in the image).")
@click.option("--size", type=click.IntRange(0, 1000), default=4, show_default=True,
              help="How many clones to keep ready.")
@click.option("--no-wait", is_flag=True, help="Return at once instead of when the clones are ready.")
@click.argument("name")
@click.pass_obj
def pool_create(obj: _Context, image: str, bundle: str | None, size: int, no_wait: bool, name: str) -> None:
    """Make pool NAME: SIZE clones of IMAGE, refilled in the background as they are taken."""
    from snapbox.runtime.clones import ClonePool

    image = _image_file(image)
    p = ClonePool.create(obj.root, name, image, size, bundle=bundle, network=obj.options.network)
    if no_wait:
        return
    shown = os.isatty(2)

    def report(ready: int, total: int) -> None:
        if shown:
            print(f"\rpool {name}: {ready} of {total} clones ready\x1b[K", end="", file=sys.stderr, flush=True)

    try:
        p.wait(report)
    finally:
        if shown:
            print(file=sys.stderr)


@pool.command(name="take")
@click.argument("name")
@click.argument("container_id")
@click.pass_obj
def pool_take(obj: _Context, name: str, container_id: str) -> None:
    """Take a clone of pool NAME as container CONTAINER_ID, running on this command's stdio
    with CONTAINER_ID as its hostname, and return (as `run --detach`). With no clone ready,
    one is restored there and then (a miss). It is then an ordinary container."""
    from snapbox.runtime.clones import ClonePool

    ClonePool.load(obj.root, name).take(container_id)


@pool.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def pool_list(obj: _Context, fmt: str) -> None:
    """List the pools: size, clones ready, hits (takes served by a ready clone), misses
    (takes that had to restore one), and why a pool cannot refill, if it cannot."""
    from snapbox.runtime.clones import ClonePool

    pools = [p.status() for p in ClonePool.list(obj.root)]
    if fmt == "json":
        click.echo(json.dumps(pools, indent=2))
        return
    rows = [("NAME", "SIZE", "READY", "HITS", "MISSES", "IMAGE", "STATUS")]
    for p in pools:
        state = f"error: {p['error']}" if p.get("error") else ("refilling" if p["refiller"] else "refiller gone")
        rows.append((p["name"], str(p["size"]), str(p["ready"]), str(p["hits"]), str(p["misses"]), p["image"],
                     state))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(6)) + "  " + r[6])


@pool.command(name="delete")
@click.argument("name")
@click.pass_obj
def pool_delete(obj: _Context, name: str) -> None:
    """End pool NAME's refiller and ready clones and remove the pool; clones taken from it
    are containers of their own and go on."""
    from snapbox.runtime.clones import ClonePool

    ClonePool.load(obj.root, name).delete()


@pool.command(name="serve", hidden=True)
@click.argument("name")
@click.pass_obj
def pool_serve(obj: _Context, name: str) -> None:
    """Be pool NAME's refiller (what `pool create` starts in the background)."""
    from snapbox.runtime.clones import ClonePool

    sys.exit(ClonePool.load(obj.root, name).serve())


@cli.command()
@click.option("--stop", is_flag=True, help="Stop the warm pool of this root.")
@click.option("--serve", is_flag=True, hidden=True, help="Be the pool (what the background process runs).")
@click.option("--idle", type=float, default=None, hidden=True, help="With --serve: end after this many idle seconds.")
@click.pass_obj
def warm(obj: _Context, stop: bool, serve: bool, idle: float | None) -> None:
    """Keep a warm pool for this --root: a process that has imported the whole sandbox,
    runs the commands the native `snapbox` front end hands it and forks a sandbox process
    for each run, create, do and restore under the root, so they skip the interpreter's
    start-up and imports. It runs in the background until `snapbox warm --stop`; its log
    is <root>/.warm.log.

    Without this command, a root's first sandbox starts a pool that ends after
    SNAPBOX_WARM_IDLE seconds (default 300) without work; SNAPBOX_WARM=0 turns pools off.
    """
    from snapbox.runtime import warm as pool

    if serve:
        sys.exit(pool.serve(obj.root, command=main, idle=idle))  # it runs this command line
    if stop:
        click.echo(f"stopped the warm pool of {obj.root} (pid {pool.stop(obj.root)})")
    else:
        click.echo(f"warm pool of {obj.root} running (pid {pool.start(obj.root)})")


@cli.command()
def features() -> None:
    """What this runtime supports, as runc's `features` prints it (OCI runtime features JSON)."""
    from importlib.metadata import version

    from snapbox.runtime.bundle import HOOK_KINDS

    click.echo(json.dumps({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            # The sentry is the sandbox's kernel: every namespace is its own, whatever the
            # config asks; a network namespace path in the config is joined.
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": [],
            "cgroup": {"v1": False, "v2": False, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.snapbox.version": version("snapbox")},
    }, indent=2))


@cli.command(name="cpu-features")
@click.option("--json", "as_json", is_flag=True, help="Print vendor, features and XSAVE layout as JSON.")
def cpu_features(as_json: bool) -> None:
    """Print the host CPU's features, named as in /proc/cpuinfo.

    These are what an image records and what a restore checks: an image can only be
    restored on a host with every application-visible feature it was taken with.

    The environment variable SNAPBOX_HOST_CPU_FEATURES (comma-separated names), when set,
    replaces the detected feature set: for testing what a restore on a smaller host does.
    """
    from snapbox.platform.cpuid import FeatureSet

    fs = FeatureSet.host()
    if as_json:
        click.echo(json.dumps({"vendor": fs.vendor, "family": fs.family, "model": fs.model,
                               "features": sorted(fs.features), "xcr0": fs.xcr0,
                               "xsave_size": fs.xsave_size}, indent=2))
    else:
        click.echo(" ".join(sorted(fs.features)))


@cli.command()
@click.argument("container_id")
@click.pass_obj
def wait(obj: _Context, container_id: str) -> None:
    """Wait for the container to stop and print its exit status as JSON."""
    from snapbox.runtime.control import exit_code

    status = _container(obj, container_id).wait()
    click.echo(json.dumps({"id": container_id, "exitStatus": exit_code(status)}))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json", "full"]), default="table", show_default=True,
              help="table: pids as the container sees them; json: the host pids of the processes, a JSON "
                   "list (runc's contract: what containerd reads); full: every detail, as JSON objects.")
@click.argument("container_id")
@click.pass_obj
def ps(obj: _Context, fmt: str, container_id: str) -> None:
    """List the processes inside a container."""
    procs = _container(obj, container_id).processes()
    if fmt == "json":
        click.echo(json.dumps([p["host_pid"] for p in procs]))
        return
    if fmt == "full":
        click.echo(json.dumps(procs, indent=2))
        return
    click.echo(f"{'UID':>5} {'PID':>6} {'PPID':>6} {'STAT':4} {'THR':>3} CMD")
    for p in procs:
        click.echo(f"{p['uid']:>5} {p['pid']:>6} {p['ppid']:>6} {p['state']:4} {p['threads']:>3} {p['cmd']}")


@cli.command()
@click.option("--stats", is_flag=True, help="Print one statistics event and exit.")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between events.")
@click.argument("container_id")
@click.pass_obj
def events(obj: _Context, stats: bool, interval: float, container_id: str) -> None:
    """Print statistics events (memory and pids) as JSON lines, every INTERVAL seconds
    until the container stops, or once with --stats."""
    import time

    c = _container(obj, container_id)
    while True:
        try:
            data = c.stats()
        except SnapboxError:
            if stats:
                raise
            return  # it stopped
        click.echo(json.dumps({"type": "stats", "id": container_id, "data": data}))
        if stats:
            return
        time.sleep(interval)
        c = _container(obj, container_id)


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where to write config.json.")
def spec(bundle: str) -> None:
    """Write a default config.json (runs "sh" on ./rootfs) for you to edit."""
    from snapbox.runtime.bundle import default_spec

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise SnapboxError(f"{path} already exists")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent=2)
        f.write("\n")


def _user(value: str | None) -> tuple[int, int]:
    if not value:
        return 0, 0
    uid, _, gid = value.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise SnapboxError(f"--user takes UID[:GID] as numbers, not {value!r}") from None


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--detach", "-d", is_flag=True, help="Return once the process runs (print its pid).")
@click.option("--cwd", default=None, help="Working directory inside the container.")
@click.option("--env", "-e", "envs", multiple=True, help="KEY=VALUE for the process (repeatable).")
@click.option("--user", "-u", default=None, help="UID[:GID] to run as.")
@click.option("--tty", "-t", is_flag=True, help="Run the process on this command's terminal.")
@click.option("--process", "process_file", type=click.Path(dir_okay=False), default=None,
              help="An OCI process JSON (args, env, cwd, user) instead of the arguments.")
@click.option("--console-socket", type=click.Path(dir_okay=False), default=None,
              help="Run the process on a new terminal, whose master is sent to this AF_UNIX socket "
                   "(runc's form, what containerd's shim passes for `ctr task exec -t`).")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the pid of a host process that lives as long as the new process and exits "
                   "with its code, passing SIGINT, SIGTERM and SIGHUP on to it: this command's own, or "
                   "with --detach one left behind (what containerd's shim waits for, as with runc).")
@click.argument("container_id")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def exec(obj: _Context, detach: bool, cwd: str | None, envs: tuple[str, ...], user: str | None, tty: bool,
         process_file: str | None, console_socket: str | None, pid_file: str | None, container_id: str,
         command: tuple[str, ...]) -> None:
    """Run another process in a running container, on this command's stdio.

    Attached, it waits and exits with the process's exit code (128+N if killed by signal
    N), passing SIGINT, SIGTERM and SIGHUP on to it. Detached, it prints the process's
    pid in the container once it runs (nothing with --pid-file: its stdout is the process's).
    """
    from snapbox.runtime.control import exit_code

    if tty and not os.isatty(0):
        raise SnapboxError("exec --tty needs a terminal on stdin")  # it runs on this command's terminal
    c = _container(obj, container_id)
    args, env, uid_gid = list(command), list(envs), _user(user)
    if process_file:
        try:
            with open(process_file) as f:
                proc = json.load(f)
        except (OSError, ValueError) as e:
            raise SnapboxError(f"cannot read {process_file} ({e})") from None
        args = proc.get("args") or args
        env = proc.get("env", []) + env
        cwd = cwd or proc.get("cwd")
        u = proc.get("user") or {}
        uid_gid = (u.get("uid", 0), u.get("gid", 0)) if u else uid_gid
    if not args:
        raise SnapboxError("exec needs a command")
    if not any(e.startswith("PATH=") for e in env):
        env.append("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    forward = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    stdio, terminal = (0, 1, 2), tty
    if console_socket:
        from snapbox.runtime.container import console

        stdio, terminal = (console(console_socket),) * 3, True
    if terminal:
        from snapbox.runtime.container import KEYBOARD_SIGNALS

        forward = list(dict.fromkeys(forward + list(KEYBOARD_SIGNALS)))
    if detach and pid_file:
        _exec_behind(c, pid_file, args, env, cwd or "/", uid_gid, forward, stdio, terminal)  # prints nothing
        return
    if pid_file:
        from snapbox.runtime.container import write_pid_file

        write_pid_file(pid_file, os.getpid())
    result = c.exec(args, env, cwd or "/", uid_gid, stdio=stdio, detach=detach, forward=forward, terminal=terminal)
    if detach:
        click.echo(result)
        return
    sys.exit(exit_code(result))


def _exec_behind(c, pid_file: str, args: list[str], env: list[str], cwd: str, user: tuple[int, int],
                 forward: list[int], stdio: tuple[int, int, int], terminal: bool) -> None:
    """exec --detach --pid-file: a child of this command runs the exec attached and stays
    behind as the process's stand-in on the host (reparented, as runc's exec'd process is,
    to the nearest subreaper: containerd's shim); its pid goes to `pid_file` once the
    process runs. On a console of its own, the stand-in is the console's controlling
    process, and passes the keys' signals on to the process's foreground group."""
    from snapbox.runtime.container import write_pid_file
    from snapbox.runtime.control import exit_code

    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        code = 1
        try:
            if stdio != (0, 1, 2):  # a console of its own: the stand-in's stdio too (a caller
                os.setsid()  # that reads this command's output must not wait for the stand-in)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(stdio[0], termios.TIOCSCTTY, 0)
                for n in (0, 1, 2):
                    os.dup2(stdio[0], n)
                os.close(stdio[0])
            status = c.exec(args, env, cwd, user, forward=forward, terminal=terminal,
                            started=lambda pid: os.write(w, f"{pid}\n".encode()))
            code = exit_code(status)
        except SnapboxError as e:
            os.write(w, f"error {e}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.readline().strip()
    if not answer.isdigit():
        os.waitpid(child, 0)
        raise SnapboxError(answer.removeprefix("error ") or "exec failed")
    write_pid_file(pid_file, child)


def _caller_rlimits() -> list[dict]:
    """The resource limits of the process the user ran (OCI process.rlimits), which the
    command of `do` runs with, as it would run on the host."""
    import resource

    from snapbox.runtime.bundle import RLIMIT_NAMES
    from snapbox.runtime.warm import caller

    out = []
    for name, number in RLIMIT_NAMES.items():
        soft, hard = resource.prlimit(caller(), number)
        out.append({"type": name, "soft": soft if soft >= 0 else (1 << 64) - 1,
                    "hard": hard if hard >= 0 else (1 << 64) - 1})
    return out


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--id", "cid", default=None, help="Name the sandbox (default: a fresh do-NNNN).")
@click.option("--detach", "-d", is_flag=True,
              help="Leave it running (as container ID) instead of waiting: it can be checkpointed "
                   "like any other, and its images restore without --bundle.")
@_snapshot_option
@_publish_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def do(obj: _Context, cid: str | None, detach: bool, snapshot_to: str | None, publish: tuple[str, ...],
       command: tuple[str, ...]) -> None:
    """Run COMMAND in a sandbox whose root is the host's / (read-only, beneath a
    writable layer), in the current directory, with the current environment and the
    host's host name (the sandbox's own to change), on the host's network (unless the
    global --network says otherwise). Like `runsc do`. Attached, it exits with the
    command's exit code and is deleted."""
    from snapbox.runtime.bundle import default_spec
    from snapbox.runtime.container import Container
    from snapbox.runtime.warm import caller

    cid = cid or f"do-{os.getpid()}"
    if os.path.exists(os.path.join(obj.root, cid)):
        raise SnapboxError(f'container "{cid}" already exists')
    config = default_spec()
    config["process"].update(args=list(command), cwd=os.getcwd(), env=[f"{k}={v}" for k, v in os.environ.items()],
                             rlimits=_caller_rlimits())
    config["root"] = {"path": "/"}  # the host's files are only ever read: writes stay in memory
    config["hostname"] = socket.gethostname()  # as `runsc do`: the name the host's /etc/hosts knows
    config["mounts"] = [{"destination": "/sys", "type": "tmpfs", "source": "none"}]  # not the host's /sys
    options = _options(obj, snapshot_to, publish)
    # As `runsc do`: the host's network, and (attached) a sandbox that ends with the command.
    options = dataclasses.replace(options, network=options.network or "host", tied_to=0 if detach else caller())
    c = Container.create(obj.root, cid, Container.owned_bundle(obj.root, cid, config), start=True,
                         options=options)
    if not detach:
        _attach(c)


def main() -> None:
    try:
        cli.main(prog_name="snapbox", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _fail(e.format_message(), 2)
    except click.exceptions.Abort:
        sys.exit(130)
    except Cancelled as e:
        _fail(str(e), 130)
    except SnapboxError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if _DEBUG:
            traceback.print_exc()
        _fail(f"internal error: {e!r} (run with --debug for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    """Report an error on stderr (and in --log) and exit."""
    print(f"snapbox: error: {message}", file=sys.stderr)
    _log_line("error", message)
    sys.exit(code)


def warn(message: str) -> None:
    """A warning: to --log if one was given (as runc writes them), else on stderr."""
    if not _log_line("warning", message):
        print(f"snapbox: warning: {message}", file=sys.stderr)


def _log_line(level: str, message: str) -> bool:
    """Append a line to --log in its format (JSON as runc's: level, msg, and an RFC 3339
    time, what containerd parses). False if there is no --log. A usage error comes before
    the options are parsed: --log is then looked for in the arguments themselves."""
    where = _LOG or _log_in_argv(sys.argv[1:])
    if where is None:
        return False
    path, fmt = where
    now = datetime.datetime.now().astimezone().isoformat(timespec="microseconds")
    line = (json.dumps({"level": level, "msg": message, "time": now}) if fmt == "json"
            else f"snapbox: {level}: {message}")
    with contextlib.suppress(OSError), open(path, "a") as f:  # the message is on stderr too
        f.write(line + "\n")
    return True


def _log_in_argv(argv: list[str]) -> tuple[str, str] | None:
    found: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # the global options, before the command
        name, eq, value = argv[i].partition("=")
        if name in _GLOBAL_VALUES and not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        found[name] = value
        i += 1
    if not found.get("--log"):
        return None
    return found["--log"], "json" if found.get("--log-format") == "json" else "text"


_GLOBAL_VALUES = ("--root", "--debug-log", "--log", "--log-format", "--network", "--rootless", "--criu")
