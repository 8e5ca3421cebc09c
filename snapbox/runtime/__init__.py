"""The runtime: containers on disk, the sandbox process, and its control socket."""
