"""Pure tensor modules: one idea per file, no I/O, no config parsing."""
