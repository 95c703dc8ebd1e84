"""nexfort utilities."""
