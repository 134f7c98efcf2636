"""Console users (`api.users_file`): a YAML list of name, role and scrypt password hash,
written by `umsrep user add`. Roles: `admin` acts (reprocess, complete, discard, retry,
pause) and sees patient names; `viewer` looks, without patient data."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from umsrep_core.errors import ConfigError

ROLES = ("admin", "viewer")
# scrypt's cost: about 50 ms and 16 MiB a check (OWASP's floor is N=2**17 with r=8, p=1).
N, R, P = 2**14, 8, 1


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password: str  # scrypt$N$r$p$salt$hash, hex


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify(user: User, password: str) -> bool:
    _, n, r, p, salt, digest = user.password.split("$")
    given = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                           p=int(p))
    return hmac.compare_digest(given.hex(), digest)


def load_users(path: Path) -> dict[str, User]:
    try:
        rows = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"api.users_file {path}: {exc}") from exc
    users = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("role") not in ROLES or not str(
                row.get("password", "")).startswith("scrypt$"):
            raise ConfigError(f"api.users_file {path}: each user needs a name, a role "
                              f"({' or '.join(ROLES)}) and a password written by "
                              "`umsrep user add`")
        users[str(row["name"])] = User(str(row["name"]), str(row["role"]), str(row["password"]))
    return users


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace a user; the file is readable by its owner only."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: {' or '.join(ROLES)}")
    if len(password) < 12:
        raise ConfigError("a password of at least 12 characters is needed")
    users = load_users(path)
    users[name] = User(name, role, hash_password(password))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump([vars(u) for u in users.values()], f)
    temporary.replace(path)
