"""provisioning (see DESIGN.md)."""
