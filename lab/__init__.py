"""rl-lb lab wing: what drives the proxy from the outside.

Emulated scenario backends, the open-loop load generator, the live benchmark, the sim-to-real
report and the demo. The lab may import the core, `envs`, `serving` and training's tracking; the
proxy (`serving`) never imports the lab.
"""
