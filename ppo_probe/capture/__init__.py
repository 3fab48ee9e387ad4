"""Capture room: the training hot path. Imports torch, never pandas."""
