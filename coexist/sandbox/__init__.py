"""A local Microsoft 365 tenant pair that speaks the real protocols.

Part of the product (`coexist demo`, `coexist sandbox serve`) and the ground
every test runs on. The product never imports this package except in
`commands.demo` (and the demos it runs: `coexist.imapdemo`) and tests.

For IMAP there is no imitation: `dovecot` starts a real Dovecot (the distribution's
binaries) and `imapseed` fills its mailboxes over IMAP.
"""

from .server import Sandbox

__all__ = ["Sandbox"]
