"""simic."""
