"""The bottom layer: run folders, experiment tracking, atomic file IO, plain containers, torch set-up.

Every other part of skinderm may import this package; it imports nothing of skinderm's above it
(tests/test_layers.py walks the imports and enforces it).
"""
