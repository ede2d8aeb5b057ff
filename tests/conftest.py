"""Shared pytest configuration: fixtures live in tests/support and are loaded as plugins."""

pytest_plugins = [
    "tests.support.cluster_fixtures",
    "tests.support.model_fixtures",
    "tests.support.node_fixtures",
    "tests.support.images",
]
