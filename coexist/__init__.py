"""coexist: tenant-to-tenant Microsoft 365 migration with coexistence."""

__version__ = "0.1.0"
