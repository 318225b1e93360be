"""Reading a settings file: one function, so every file the product reads fails the same way.

Scenarios, the proxy's config and training configs are all TOML; whichever it is, a missing file,
an unreadable one, one that is not UTF-8 or not TOML is one error line naming the file (the
caller's error class, so the CLI prints it and exits 2), never a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from rl_lb.errors import ConfigError, RlLbError

__all__ = ["read_toml"]


def read_toml(
    path: str | Path, error: type[RlLbError] = ConfigError, missing_fix: str = ""
) -> dict[str, Any]:
    """The file's top-level table; `missing_fix` is the hint printed when it does not exist."""
    where = str(path)
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise error(where, "file not found", missing_fix) from None
    except IsADirectoryError:
        raise error(where, "is a directory, not a file", "give the .toml file in it") from None
    except OSError as failure:
        raise error(where, f"cannot read it: {failure.strerror}") from None
    except UnicodeDecodeError as failure:
        raise error(where, f"not UTF-8 text (byte {failure.start})", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as failure:
        raise error(where, f"invalid TOML: {failure}", "fix the syntax there") from None
