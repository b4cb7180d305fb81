"""discovery (see DESIGN.md)."""
