"""Flows and helpers used only by the tests."""
