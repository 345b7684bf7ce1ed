"""nissa."""
