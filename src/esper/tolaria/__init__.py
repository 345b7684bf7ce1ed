"""tolaria."""
