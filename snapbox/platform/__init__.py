"""The platform: stub processes run application code; the CPU feature set images record."""
