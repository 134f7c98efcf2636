"""Console users (pacs_node.users): scrypt hashes, roles, a file only its owner reads, and
clear errors for what is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.users import add_user, load_users, verify
from umsrep_core.errors import ConfigError


def test_a_user_added_logs_in_with_its_password_only(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    add_user(path, "ada", "admin", "correct horse battery")
    add_user(path, "vic", "viewer", "another long password")
    users = load_users(path)
    assert {u.name: u.role for u in users.values()} == {"ada": "admin", "vic": "viewer"}
    assert verify(users["ada"], "correct horse battery")
    assert not verify(users["ada"], "another long password")
    assert "correct horse" not in path.read_text()  # a hash, salted
    assert path.stat().st_mode & 0o777 == 0o600
    add_user(path, "ada", "viewer", "a new long password")  # replaced
    assert load_users(path)["ada"].role == "viewer"


def test_what_is_not_a_user_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    assert load_users(path) == {}  # none yet: nobody logs in
    with pytest.raises(ConfigError, match="at least 12 characters"):
        add_user(path, "ada", "admin", "short")
    with pytest.raises(ConfigError, match="admin or viewer"):
        add_user(path, "ada", "root", "a long enough password")
    path.write_text("- {name: eve, role: admin, password: plain-text}\n")
    with pytest.raises(ConfigError, match="written by `umsrep user add`"):
        load_users(path)
