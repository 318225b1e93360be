"""rl-lb training wing."""
