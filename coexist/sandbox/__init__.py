"""A local Microsoft 365 tenant pair that speaks the real protocols.

Part of the product (`coexist demo`, `coexist sandbox serve`) and the ground
every test runs on. The product never imports this package except in
`commands.demo` and tests.
"""

from .server import Sandbox

__all__ = ["Sandbox"]
