"""rl-lb envs wing."""
