"""Shared pytest configuration: fixtures live in tests/fixtures/ and are loaded as plugins."""

pytest_plugins = [
    "tests.fixtures.comfy",
    "tests.fixtures.prefect",
    "tests.fixtures.db",
    "tests.fixtures.chaos",
    "tests.fixtures.gateway",
    "tests.fixtures.web",
]
