"""Pure converters from maskloop results to external annotation formats (no I/O)."""
