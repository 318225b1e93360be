"""rl-lb core: metrics, features, policies, pickers and balancers, for the simulator and the proxy.

No web framework and no torch here: the proxy imports this package on its request path.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
