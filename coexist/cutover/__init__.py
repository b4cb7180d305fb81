"""cutover (see DESIGN.md)."""
