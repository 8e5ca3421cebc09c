"""`python -m snapbox` runs the command line."""

from snapbox.cli import main

main()
