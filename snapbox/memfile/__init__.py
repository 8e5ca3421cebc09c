"""MemoryFile: one memfd that holds every byte of application memory, and its page allocator."""

from snapbox.memfile.memfile import PAGE_SIZE, MemoryFile, page_align, page_round_down

__all__ = ["PAGE_SIZE", "MemoryFile", "page_align", "page_round_down"]
