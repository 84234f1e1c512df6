"""Measurements over many prompts, through the public API: POPE, sink-dimension discovery."""
