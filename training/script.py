"""What the `python -m training.X` measurement commands share: the record-cache flag, and how
they end (one line and exit 2 on a bad input, one line and 130 on Ctrl-C, one line and 143 on
SIGTERM, its workers stopped, as `rl-lb` ends)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rl_lb.errors import RlLbError
from rl_lb.terminate import (
    INTERRUPTED,
    INTERRUPTED_LINE,
    TERMINATED,
    TERMINATED_LINE,
    SigtermAsInterrupt,
)

__all__ = ["add_record_cache_flag", "run_script"]


def add_record_cache_flag(parser: argparse.ArgumentParser) -> None:
    """`--record-cache`: the heuristics' episodes come from and go to `envs.record_cache`."""
    parser.add_argument(
        "--record-cache",
        action="store_true",
        help="reuse and keep the heuristics' episode records in the evaluation record cache "
        "(RL_LB_RECORD_CACHE; docs/training.md): same records, not simulated again",
    )


def run_script(main: Callable[[], None]) -> None:
    """Run a command's `main`, turning a bad input, Ctrl-C and SIGTERM into one line and an exit
    status."""
    terminate = SigtermAsInterrupt()
    terminate.install()
    try:
        main()
    except RlLbError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        if terminate.received:
            print(TERMINATED_LINE, file=sys.stderr)
            raise SystemExit(TERMINATED) from None
        print(INTERRUPTED_LINE, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        terminate.uninstall()
