"""`rl-lb scenario fit` and `rl-lb scenario check`: a scenario of the user's own pool, fitted to
what `rl-lb serve --record DIR` saw (serving/recorder.py), and a replay that says whether the
fitted world reproduces the recording."""
