"""Runs a command on a new pseudo-terminal (pty.fork), types a few shell commands into
it, and prints all it wrote until it hung up, with its exit status."""

import os
import pty
import sys

pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
os.write(fd, b"tty; echo $((6*7)); sleep 0.2 & wait; stty size; exit\n")
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:  # EIO: the slave's last holder has gone
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
print(repr(out.decode(errors="replace")))
print("status", status)
