"""The Prefect server's database switch: `prefect.database_url` → the server's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.local.prefect_server import DATABASE_ENV, PrefectServer, server_database_env
from comfyfleet.settings import Settings

PG = "postgresql+asyncpg://prefect:s3cret@db.internal:5432/prefect"


def test_postgres_url_from_the_config_file_reaches_only_the_server_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "comfyfleet.yaml"
    config.write_text(f"prefect: {{api_url: 'http://127.0.0.1:4300/api', database_url: '{PG}'}}\n")
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(config))
    settings = Settings()
    server = PrefectServer(home=tmp_path, port=4300, database_url=settings.prefect.database_url)
    env = server.server_env({})
    assert env[DATABASE_ENV] == PG
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4300/api"
    assert DATABASE_ENV not in server.env()  # workers and flows never get the server's database
    assert "s3cret" not in server.database


def test_environment_variable_switches_the_server_to_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("COMFYFLEET_PREFECT__DATABASE_URL", "postgresql://postgres@127.0.0.1/pf")
    server = PrefectServer(home=tmp_path, port=4200, database_url=Settings().prefect.database_url)
    assert server.server_env({})[DATABASE_ENV] == "postgresql+asyncpg://postgres@127.0.0.1/pf"


def test_without_a_database_url_the_server_uses_sqlite_even_if_the_caller_had_one(
    tmp_path: Path,
) -> None:
    server = PrefectServer(home=tmp_path, port=4200)
    inherited = {DATABASE_ENV: PG, "PREFECT_API_DATABASE_CONNECTION_URL": PG, "PATH": "/bin"}
    env = server.server_env(inherited)
    assert DATABASE_ENV not in env and "PREFECT_API_DATABASE_CONNECTION_URL" not in env
    assert env["PATH"] == "/bin" and env["PREFECT_HOME"] == str(tmp_path)
    assert server.database == f"SQLite in {tmp_path}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:////var/prefect/prefect.db", "sqlite+aiosqlite:////var/prefect/prefect.db"),
    ],
)
def test_database_urls_get_the_drivers_of_the_prefect_server(given: str, expected: str) -> None:
    assert server_database_env(given) == {DATABASE_ENV: expected}


@pytest.mark.parametrize("url", ["mysql+pymysql://root@127.0.0.1:3306/prefect", "not a url"])
def test_a_database_prefect_cannot_run_on_is_refused_before_any_server_starts(url: str) -> None:
    with pytest.raises(ValueError, match=r"prefect\.database_url"):
        server_database_env(url)


def test_several_api_processes_run_on_postgres_and_redis_with_the_services_apart(
    tmp_path: Path,
) -> None:
    server = PrefectServer(
        home=tmp_path, port=4200, database_url=PG, api_workers=3, redis_url="redis://r:6379/2"
    )
    env = server.server_env({"PREFECT_MESSAGING_BROKER": "inherited"})
    assert (
        env["PREFECT_MESSAGING_BROKER"]
        == env["PREFECT_MESSAGING_CACHE"]
        == ("prefect_redis.messaging")
    )
    assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert env["PREFECT_REDIS_MESSAGING_URL"] == "redis://r:6379/2"
    assert server.command()[-2:] == ["--workers", "3"]
    assert server.services_command()[-3:] == ["server", "services", "start"]  # type: ignore[index]
    one = PrefectServer(home=tmp_path, port=4200)
    assert "--workers" not in one.command() and one.services_command() is None
    assert "PREFECT_MESSAGING_BROKER" not in one.server_env({"PREFECT_MESSAGING_BROKER": "x"})


@pytest.mark.parametrize(
    ("database_url", "redis_url", "names"),
    [(None, "redis://r/0", "prefect.database_url"), (PG, None, "prefect.redis_url")],
)
def test_several_api_processes_without_postgres_or_redis_are_refused_naming_the_setting(
    tmp_path: Path, database_url: str | None, redis_url: str | None, names: str
) -> None:
    server = PrefectServer(
        home=tmp_path, port=4200, database_url=database_url, api_workers=2, redis_url=redis_url
    )
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        server.server_env({})


def test_use_prefect_points_an_already_imported_prefect_at_the_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI command imports Prefect while building its parser; the fleet's API URL set after
    that must still reach the client (else it starts a temporary server of its own)."""
    import prefect.context
    from prefect.settings import get_current_settings

    from comfyfleet.local.prefect_server import use_prefect
    from comfyfleet.settings import Settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    settings = Settings(
        prefect={"api_url": "http://127.0.0.1:4299/api"}, embedded={"var_dir": str(tmp_path)}
    )
    try:
        use_prefect(settings)
        assert get_current_settings().api.url == "http://127.0.0.1:4299/api"
    finally:
        monkeypatch.undo()
        prefect.context.refresh_global_settings_context()
