"""tamiyo."""
