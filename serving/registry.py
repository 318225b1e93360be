"""The model-registry client: `models:/NAME/VERSION` or `models:/NAME@ALIAS` → a local directory.

The only module of the proxy that talks to MLflow, and only when such a spec is loaded: mlflow
is imported inside `resolve`, so a proxy given file paths runs without it, and torch is never
needed (what `rl-lb train` registers is the numpy export, see training/tracking.py). The core
finds `resolve` through the `rl_lb.model_resolvers` entry point named `models`
(rl_lb/policies/learned.py), so it never imports this wing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from rl_lb.errors import ModelError
from rl_lb.tracking_store import describe_store, require_store

__all__ = ["ModelRef", "alias_version", "parse_models_uri", "resolve"]

SCHEME = "models:/"
_REF = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))")


class ModelRef(NamedTuple):
    """One registered model version, named by its number or by an alias (`champion`)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        suffix = f"/{self.version}" if self.version is not None else f"@{self.alias}"
        return f"{SCHEME}{self.name}{suffix}"


def parse_models_uri(uri: str) -> ModelRef:
    """`models:/rl-lb-policy/3` → ModelRef("rl-lb-policy", 3); a one-line `ModelError` else."""
    match = _REF.fullmatch(uri)
    if match is None:
        raise ModelError(
            uri, "not a model registry URI", "use models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    version = match["version"]
    return ModelRef(match["name"], int(version) if version else None, match["alias"])


def _mlflow(uri: str) -> Any:
    """mlflow, pointed at the tracking store every command shares (rl_lb/tracking_store.py),
    which must exist: a lookup never creates one."""
    try:
        import mlflow
    except ImportError:
        raise ModelError(
            uri, "models:/ URIs need mlflow", "install rl-lb[train] or give a file path"
        ) from None
    mlflow.set_tracking_uri(require_store(uri))
    return mlflow


def _registry_error(uri: str, error: Exception) -> ModelError:
    what = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelError(
        uri,
        f"cannot fetch it from the registry of {describe_store()}: {what}",
        "list the versions with `rl-lb ui`, or pass --tracking-uri for another store",
    )


def resolve(uri: str) -> Path:
    """Download the registered model `uri` names and return its local directory."""
    ref = parse_models_uri(uri)
    mlflow = _mlflow(uri)
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri))
    except (MlflowException, OSError) as error:
        raise _registry_error(uri, error) from None


def alias_version(uri: str) -> int:
    """The version a `models:/NAME@ALIAS` URI points to now (a read: proxies never write the
    registry; `rl-lb promote` moves aliases)."""
    ref = parse_models_uri(uri)
    if ref.alias is None:
        raise ModelError(uri, "names a version, not an alias", "use models:/NAME@ALIAS")
    mlflow = _mlflow(uri)
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(ref.name, ref.alias)
    except (MlflowException, OSError) as error:
        raise _registry_error(uri, error) from None
    return int(found.version)
