"""rl-lb serving wing."""
