"""Small utilities shared by the training entry points (logging, rank helpers)."""
