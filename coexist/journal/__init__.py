"""journal (see DESIGN.md)."""
