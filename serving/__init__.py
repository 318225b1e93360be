"""rl-lb serving wing: the proxy. It imports the core only (tests/test_import_rules.py)."""
