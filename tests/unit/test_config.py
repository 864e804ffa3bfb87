"""Settings.from_env: every variable read as documented; a bad value refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inventory_graphql.config import ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_nothing_set_gives_the_defaults():
    assert Settings.from_env({}) == Settings()


def test_empty_values_mean_unset():
    assert Settings.from_env(dict.fromkeys(Settings.variables(), "")) == Settings()


def test_values_are_read_into_their_fields():
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/inventory",
            "INVENTORY_DATA_DIR": "/srv/pg",
            "INVENTORY_HOLD_TTL_SECONDS": "90",
            "INVENTORY_SWEEP_INTERVAL_SECONDS": "0.25",
            "INVENTORY_COALESCE_RESERVATIONS": "OFF",
            "INVENTORY_DIRECT_DELIVERY": "no",
            "INVENTORY_ENV": "production",
            "INVENTORY_LOG_FORMAT": "json",
            "INVENTORY_ADMIN_TOKEN": "s3cret",
        }
    )
    assert settings.database_url == "postgresql://db/inventory"
    assert settings.data_dir == Path("/srv/pg")
    assert settings.hold_ttl_seconds == 90
    assert settings.sweep_interval_seconds == 0.25
    assert settings.coalesce_reservations is False
    assert settings.direct_delivery is False
    assert settings.production is True
    assert settings.log_format == "json"
    assert settings.admin_token == "s3cret"


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("INVENTORY_COALESCE_RESERVATIONS", "flase", "one of on, true, 1, yes, off, false, 0, no"),
        ("INVENTORY_DIRECT_DELIVERY", "enabled", "one of on, true"),
        ("INVENTORY_HOLD_TTL_SECONDS", "ten", "an integer from 1 to 86400"),
        ("INVENTORY_HOLD_TTL_SECONDS", "0", "an integer from 1 to 86400"),
        ("INVENTORY_DB_POOL_SIZE", "8.5", "an integer from 1 to 1000"),
        ("INVENTORY_SWEEP_INTERVAL_SECONDS", "0", "a number above 0"),
        ("INVENTORY_REQUEST_TIMEOUT_SECONDS", "nan", "a number above 0"),
        ("INVENTORY_REQUEST_TIMEOUT_SECONDS", "inf", "a number above 0"),
        ("INVENTORY_OVERDUE_GRACE_SECONDS", "-1", "a number from 0 up"),
        ("INVENTORY_LOG_FORMAT", "yaml", "one of text, json"),
        ("INVENTORY_ENV", "prod", "one of production, development"),
        ("INVENTORY_MAX_BODY_BYTES", "10", "an integer from 1024 up"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_what_it_accepts(variable, value, accepts):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r} is not valid"), message
    assert accepts in message, message


def test_every_variable_is_documented_in_the_readme():
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    assert set(Settings.variables()) <= documented, set(Settings.variables()) - documented


def test_each_variable_is_read_by_exactly_one_field():
    variables = Settings.variables()
    assert len(variables) == len(set(variables))


def test_without_an_admin_token_one_is_made_and_admin_is_never_open():
    settings, generated = Settings().with_admin_token()
    assert generated is not None and len(generated) >= 24
    assert settings.admin_token == generated
    again, _ = Settings().with_admin_token()
    assert again.admin_token != generated, "a token nobody was shown cannot be guessed"


def test_a_configured_admin_token_is_kept():
    settings, generated = Settings(admin_token="given").with_admin_token()
    assert (settings.admin_token, generated) == ("given", None)


def test_the_server_refuses_to_start_with_a_bad_value():
    import subprocess
    import sys

    started = subprocess.run(
        [sys.executable, "-m", "inventory_graphql", "serve"],
        env={"INVENTORY_COALESCE_RESERVATIONS": "flase", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 2
    assert "INVENTORY_COALESCE_RESERVATIONS='flase' is not valid" in started.stderr
