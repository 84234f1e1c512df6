"""Synthetic scenes, their questions, and a POPE-style benchmark (no downloads; seeded)."""
