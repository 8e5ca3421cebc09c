"""The snapbox command line: runc-style commands over containers and their images."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import click

from snapbox.state.errors import SnapboxError

_DEBUG = False


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


class _Group(click.Group):
    def format_epilog(self, ctx, formatter):
        formatter.write_paragraph()
        formatter.write_text("Run 'snapbox COMMAND --help' for a command's options.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Directory for container state (default: /var/run/snapbox as root, "
                   "$XDG_RUNTIME_DIR/snapbox otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="snapbox", prog_name="snapbox")
@click.pass_context
def cli(ctx: click.Context, root: str | None, debug: bool) -> None:
    """snapbox: run Linux programs in a sandbox whose whole state can be checkpointed,
    restored and moved.

    A sandbox runs the program natively under ptrace; a user-space kernel (the sentry)
    emulates every system call and owns every byte of the program's state.
    """
    global _DEBUG
    _DEBUG = debug
    from snapbox.runtime.container import default_root

    ctx.obj = os.path.abspath(root or default_root())


def _container(root: str, cid: str):
    from snapbox.runtime.container import Container

    return Container.load(root, cid)


def _attach(c) -> None:
    """Wait for an attached sandbox, forwarding signals; exit with the program's code."""
    from snapbox.runtime import control
    from snapbox.runtime.container import exit_code

    def forward(signum, frame):
        try:
            control.call(c.control_path, "kill", timeout=5, signal=signum)
        except SnapboxError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    status = c.wait()
    c.delete(force=True)
    sys.exit(exit_code(status))


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(),
              help="Path to the OCI bundle (a directory holding config.json and the rootfs).")
@click.option("--detach", "-d", is_flag=True,
              help="Return once the program runs; it keeps this command's stdio.")
@click.argument("container_id")
@click.pass_obj
def run(root: str, bundle: str, detach: bool, container_id: str) -> None:
    """Create and start a container.

    Without --detach, waits for the program, forwards SIGINT, SIGTERM and SIGHUP to it,
    deletes the container and exits with the program's exit code (128+N if it was
    killed by signal N).
    """
    from snapbox.runtime.container import Container

    c = Container.create(root, container_id, bundle, start=True)
    if not detach:
        _attach(c)


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(),
              help="Path to the OCI bundle.")
@click.argument("container_id")
@click.pass_obj
def create(root: str, bundle: str, container_id: str) -> None:
    """Create a container: its program is loaded but does not run until 'start'."""
    from snapbox.runtime.container import Container

    Container.create(root, container_id, bundle, start=False)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def start(root: str, container_id: str) -> None:
    """Start a created container."""
    _container(root, container_id).start()


@cli.command()
@click.argument("container_id")
@click.pass_obj
def pause(root: str, container_id: str) -> None:
    """Stop every task of a running container where it is."""
    _container(root, container_id).pause()


@cli.command()
@click.argument("container_id")
@click.pass_obj
def resume(root: str, container_id: str) -> None:
    """Let a paused container run again."""
    _container(root, container_id).resume()


@cli.command()
@click.argument("container_id")
@click.argument("signal_name", metavar="[SIGNAL]", default="SIGTERM")
@click.pass_obj
def kill(root: str, container_id: str, signal_name: str) -> None:
    """Send a signal (name or number; default SIGTERM) to the container's init process."""
    _container(root, container_id).kill(_signal_number(signal_name))


@cli.command()
@click.option("--force", "-f", is_flag=True, help="Kill the container first if it is still alive.")
@click.argument("container_id")
@click.pass_obj
def delete(root: str, container_id: str, force: bool) -> None:
    """Delete a stopped container (or any, with --force)."""
    from snapbox.runtime.container import Container

    try:
        c = Container.load(root, container_id)
    except SnapboxError:
        if force and not os.path.exists(os.path.join(root, container_id)):
            return  # nothing to delete: --force makes that a success, as with runc
        raise
    c.delete(force=force)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def state(root: str, container_id: str) -> None:
    """Print the container's state as OCI state JSON."""
    click.echo(json.dumps(_container(root, container_id).oci_state(), indent=2))


@cli.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def list_(root: str, fmt: str) -> None:
    """List the containers under --root."""
    from snapbox.runtime.container import Container

    states = [c.oci_state() for c in Container.list(root)]
    if fmt == "json":
        click.echo(json.dumps(states, indent=2))
        return
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"]) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


@cli.command()
@click.option("--image-path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the image; - writes it to stdout (a pipe or a file).")
@click.option("--leave-running", is_flag=True, help="Keep the container running afterwards.")
@click.option("--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True,
              help="How memory pages are stored: zstd, or none (pages laid out page-aligned).")
@click.argument("container_id")
@click.pass_obj
def checkpoint(root: str, image_path: str, leave_running: bool, compression: str,
               container_id: str) -> None:
    """Save the container's whole state to an image.

    The container stops afterwards unless --leave-running. The image is written under a
    temporary name and renamed into place when complete: an interrupted checkpoint leaves
    nothing under IMAGE_PATH, and a failed one leaves the container running. On a
    terminal, progress is shown on stderr.
    """
    image_fd = None
    if image_path == "-":
        if os.isatty(1):
            raise SnapboxError("refusing to write an image to a terminal (redirect stdout)")
        image_fd = 1
    _container(root, container_id).checkpoint(
        image_path, leave_running=leave_running, compress=compression == "zstd",
        image_fd=image_fd, progress_fd=2 if os.isatty(2) else None)


@cli.command()
@click.option("--bundle", "-b", default=".", show_default=True, type=click.Path(),
              help="Path to the OCI bundle whose rootfs the program runs on.")
@click.option("--image-path", required=True, type=click.Path(dir_okay=False),
              help="The image to restore; - reads it from stdin.")
@click.option("--detach", "-d", is_flag=True,
              help="Return once the program runs again; it keeps this command's stdio.")
@click.argument("container_id")
@click.pass_obj
def restore(root: str, bundle: str, image_path: str, detach: bool, container_id: str) -> None:
    """Create a container from an image and start it where the checkpoint left it.

    The image's CPU features are checked against this host before anything else is read,
    and the whole image is checked before anything starts. The restored program's stdio
    is this command's (with --image-path -, its stdin is what follows the image).
    """
    from snapbox.runtime.container import Container

    if image_path == "-":
        if os.isatty(0):
            raise SnapboxError("refusing to read an image from a terminal (redirect stdin)")
        source = "-"
    else:
        if not os.path.isfile(image_path):
            raise SnapboxError(f"image {image_path} does not exist")
        source = os.path.abspath(image_path)
    c = Container.create(root, container_id, bundle, restore_image=source)
    if not detach:
        _attach(c)


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


@cli.command(hidden=True)
@click.option("--id", "cid", required=True)
@click.option("--bundle", required=True)
@click.option("--ready-fd", type=int, required=True)
@click.option("--start", is_flag=True)
@click.option("--restore", default=None)
@click.pass_obj
def boot(root: str, cid: str, bundle: str, ready_fd: int, start: bool, restore: str | None) -> None:
    """The sandbox process (started by run, create and restore)."""
    from snapbox.runtime.sandbox import boot_main

    sys.exit(boot_main(root, cid, bundle, ready_fd, start, restore))


def main() -> None:
    try:
        cli.main(prog_name="snapbox", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"snapbox: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except SnapboxError as e:
        print(f"snapbox: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if _DEBUG:
            traceback.print_exc()
        print(f"snapbox: error: internal error: {e!r} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
