"""`coexist demo --scenario imap` / `imap-to-imap`: the operator's IMAP runbook from a
seeded Dovecot into the sandbox's Microsoft 365 or another Dovecot, every message once."""

from __future__ import annotations

from pathlib import Path

import pytest

from coexist import commands
from coexist.errors import ConfigError, InputError
from coexist.sandbox import dovecot


def test_unknown_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A scenario not in the registry is an InputError naming the ones there are."""
    with pytest.raises(InputError, match="imap-to-imap"):
        commands.demo(tmp_path, scenario="exchange-2010")
    assert not list(tmp_path.iterdir())


def test_missing_dovecot_names_the_packages_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the dovecot binaries the launcher says which packages to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(dovecot, "SYSTEM_DIRS", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        dovecot.binaries()
    assert "apt install dovecot-core dovecot-imapd" in str(err.value)
    assert "make test" in str(err.value)
