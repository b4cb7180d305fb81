"""tenants (see DESIGN.md)."""
