"""The configs/ presets: valid, and following the papers and the official code."""
