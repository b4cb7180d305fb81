"""migrate (see DESIGN.md)."""
