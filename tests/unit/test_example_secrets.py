"""Every credential the repository's examples show is in `config_credentials.EXAMPLE_SECRETS`, so that a
replica started with one of them, outside --dev, refuses to start (issue 12, item 5).

The scan reads what an operator copies from: docker-compose.yml, deploy/ (Kubernetes, nginx),
the docs, the READMEs, any `.env` example. It finds values given to the credential settings
(`KEY: value`, `KEY=value`, `${KEY:-default}`) and Redis URL passwords. Placeholders (`$VAR`,
`$(openssl ...)`, `<...>`, `...`) are not values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import EXAMPLE_SECRETS, ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL_SETTINGS = ("JWT_SECRET", "JWT_SECRETS", "PUBLISH_API_KEY")
_KEYS = "|".join(CREDENTIAL_SETTINGS)
_VALUE = r"(?P<quote>[\"']?)(?P<value>[^\s\"'#}]+)(?P=quote)"
# YAML (`  KEY: value`, `- KEY: value`) at the start of a line; shell and .env (`KEY=value`) anywhere.
_ASSIGNED = (re.compile(r"^\s*(?:-\s*)?[\"']?(?P<key>" + _KEYS + r")[\"']?\s*:\s*" + _VALUE, re.M),
             re.compile(r"\b(?P<key>" + _KEYS + r")=" + _VALUE))
_COMPOSE_DEFAULT = re.compile(r"\$\{(?P<key>" + "|".join(CREDENTIAL_SETTINGS) + r"):?-(?P<value>[^}]*)\}")
_URL_PASSWORD = re.compile(r"\b(?:redis|rediss|redis\+sentinel|unix)://[^:@/\s\"'`]*:(?P<value>[^@/\s\"'`]+)@")
_QUERY_PASSWORD = re.compile(r"[?&](?:sentinel_)?password=(?P<value>[^&\s\"'`#]+)")


def example_files() -> list[Path]:
    files = [ROOT / "docker-compose.yml", ROOT / "README.md"]
    files += sorted((ROOT / "deploy").rglob("*.y*ml")) + sorted((ROOT / "deploy").rglob("*.md"))
    files += sorted((ROOT / "deploy").rglob("*.conf"))
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted(p for p in ROOT.glob("clients/*/README.md"))
    files += sorted(p for p in ROOT.rglob(".env*") if ".venv" not in p.parts and "node_modules" not in p.parts)
    return [p for p in files if p.is_file()]


def placeholder(value: str) -> bool:
    return (not value or value.startswith(("$", "<", "{", "(", "`", "%")) or "..." in value or "***" in value
            or value in CREDENTIAL_SETTINGS)


def credentials_in(text: str) -> set[str]:
    found: set[str] = set()
    for match in _COMPOSE_DEFAULT.finditer(text):
        found.add(match.group("value"))
    for match in (m for pattern in _ASSIGNED for m in pattern.finditer(text)):
        value = match.group("value")
        if match.group("key") == "JWT_SECRETS":
            found.update(item.partition(":")[2] or item for item in value.split(","))
        else:
            found.add(value.rstrip(","))
    for pattern in (_URL_PASSWORD, _QUERY_PASSWORD):
        found.update(match.group("value") for match in pattern.finditer(text))
    return {value for value in found if not placeholder(value)}


def test_the_scan_sees_the_examples_it_must() -> None:
    """The scanner itself: it finds what is there today (if it found nothing, the next test
    would pass for the wrong reason)."""
    found = {value for path in example_files() for value in credentials_in(path.read_text("utf-8"))}
    assert "example-only-publish-key-change-me" in found
    assert "dev-only-insecure-jwt-secret-change-me-0123456789" in found
    assert credentials_in("export JWT_SECRET=$(openssl rand -hex 32)") == set()
    assert credentials_in("redis://user:s3cret@h:6379/0?sentinel_password=other") == {"s3cret", "other"}
    assert credentials_in('JWT_SECRETS: "old:aaa,bbb"') == {"aaa", "bbb"}


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_credential_is_refused(path: Path) -> None:
    missing = credentials_in(path.read_text("utf-8")) - EXAMPLE_SECRETS
    assert not missing, (
        f"{path.relative_to(ROOT)} shows credentials that gateway/config_credentials.py EXAMPLE_SECRETS does not "
        f"list, so a replica would start with them: {sorted(missing)}"
    )


@pytest.mark.parametrize("value", sorted(EXAMPLE_SECRETS))
def test_each_listed_example_stops_the_start(value: str) -> None:
    strong = "s" * 40
    for env in ({"JWT_SECRET": value}, {"JWT_SECRET": strong, "PUBLISH_API_KEY": value},
                {"JWT_SECRET": strong, "REDIS_URL": f"redis://:{value}@redis:6379/0"}):
        with pytest.raises(ConfigError, match="public example"):
            load_settings(env)
