"""karn."""
