"""Registry URIs (`learned:models:/NAME/N`): the core's resolver hook and the serving client.

The end-to-end path (a model registered by `rl-lb train`, fetched from MLflow) is in
tests/test_training_run.py; these tests need neither MLflow nor a store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import serving.registry
from rl_lb.errors import ModelError
from rl_lb.policies import learned
from rl_lb.policies.learned import (
    SHIPPED_DIR,
    LearnedPolicy,
    register_model_resolver,
    uri_scheme,
)
from serving.registry import ModelRef, parse_models_uri, resolve


@pytest.fixture(autouse=True)
def no_resolver_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process: nothing registered, no entry point loaded yet."""
    monkeypatch.setattr(learned, "_resolvers", {})


@pytest.mark.parametrize(
    ("spec", "scheme"),
    [
        ("models:/rl-lb-policy/3", "models"),
        ("S3+Zip:/bucket/key", "s3+zip"),
        ("/srv/policy", None),
        ("runs/best/policy.npz", None),
        ("C:/models/policy", None),  # a Windows drive is a path, not a scheme
        ("~/policy", None),
    ],
)
def test_a_spec_is_a_uri_only_with_a_scheme(spec: str, scheme: str | None) -> None:
    assert uri_scheme(spec) == scheme


def test_a_registered_resolver_turns_its_uris_into_a_local_model() -> None:
    asked: list[str] = []

    def resolver(uri: str) -> Path:
        asked.append(uri)
        return SHIPPED_DIR

    register_model_resolver("Vault", resolver)
    policy = LearnedPolicy.load("vault:/team/policy")
    assert asked == ["vault:/team/policy"]
    assert policy.version == LearnedPolicy.load(None).version


def test_models_uris_reach_the_serving_client_through_the_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyproject.toml declares `models = serving.registry:resolve`; the core loads it by name."""
    asked: list[str] = []
    monkeypatch.setattr(serving.registry, "resolve", lambda uri: asked.append(uri) or SHIPPED_DIR)
    assert LearnedPolicy.load("models:/rl-lb-policy/7").picker
    assert asked == ["models:/rl-lb-policy/7"]


def test_a_scheme_nobody_resolves_is_one_model_error_line() -> None:
    with pytest.raises(ModelError) as caught:
        LearnedPolicy.load("ftp:/models/policy")
    message = str(caught.value)
    assert message.startswith("ftp:/models/policy: no resolver for ftp:/ URIs")
    assert "models:/" in message  # what would work
    assert "\n" not in message


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("models:/rl-lb-policy/3", ModelRef("rl-lb-policy", version=3)),
        ("models:/rl-lb-policy@champion", ModelRef("rl-lb-policy", alias="champion")),
    ],
)
def test_registry_uris_name_a_version_or_an_alias(uri: str, ref: ModelRef) -> None:
    assert parse_models_uri(uri) == ref
    assert ref.uri == uri


@pytest.mark.parametrize(
    "uri", ["models:/", "models:/rl-lb-policy", "models:/rl-lb-policy/v3", "models:/a/1/2"]
)
def test_a_malformed_registry_uri_says_what_form_it_needs(uri: str) -> None:
    with pytest.raises(ModelError, match=r"models:/NAME/VERSION or models:/NAME@ALIAS\)$"):
        resolve(uri)


def test_without_mlflow_a_registry_uri_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(ModelError) as caught:
        LearnedPolicy.load("models:/rl-lb-policy/1")
    assert str(caught.value) == (
        "models:/rl-lb-policy/1: models:/ URIs need mlflow"
        " (install rl-lb[train] or give a file path)"
    )
