"""Export the actor of a trained `SetActorCriticPolicy` to the numpy artifact the proxy serves.

Only the deterministic path is exported (phi, rho, the score head): the critic and the
exploration noise are training machinery. The header records the feature layout so that a
model trained on one set of columns can never be served against another.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import (
    DEFAULT_PICKER,
    FORMAT,
    FORMAT_VERSION,
    HEADER_FILE,
    POOLING,
    WEIGHTS_FILE,
)
from training.policy import SetActorCriticPolicy, SetExtractor, SlotScoreHead, linear_layers

__all__ = ["MAX_ARTIFACT_BYTES", "export_policy"]

MAX_ARTIFACT_BYTES = 1_000_000


def _linear_layers(prefix: str, sequential: nn.Sequential) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(linear_layers(sequential)):
        arrays[f"{prefix}.{i}.weight"] = layer.weight.detach().cpu().numpy().T.astype(np.float32)
        arrays[f"{prefix}.{i}.bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
    return arrays


def export_policy(
    policy: SetActorCriticPolicy,
    out_dir: str | Path,
    encoder: FeatureEncoder,
    version: str,
    run_id: str | None = None,
    picker: str = DEFAULT_PICKER,
) -> Path:
    """Write `policy.npz` + `policy.json` into `out_dir` (created) and return the directory.

    `picker` is the one the environment used in training; the balancer serves it with that one.
    """
    shape = policy.observation_space.shape
    if shape is None or len(shape) != 2:
        raise ValueError(f"expected an observation of (slots, features), got shape {shape}")
    n_features = shape[1]
    if n_features != encoder.n_features:
        raise ValueError(
            f"policy observes {n_features} features per backend, the encoder produces "
            f"{encoder.n_features}: it was trained on another feature layout"
        )
    extractor, head = policy.mlp_extractor, policy.action_net
    if not isinstance(extractor, SetExtractor) or not isinstance(head, SlotScoreHead):
        raise TypeError("export_policy needs the set networks of SetActorCriticPolicy")
    arrays = {
        **_linear_layers("phi", extractor.phi),
        **_linear_layers("rho", extractor.rho),
        "head.weight": head.score.weight.detach().cpu().numpy()[0].astype(np.float32),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / WEIGHTS_FILE, **arrays)
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "layout": encoder.layout(),
        "architecture": {
            "kind": "deepsets",
            "slot_net": policy.slot_net,
            "head_net": policy.head_net,
            "pool": list(POOLING),
        },
        "activation": policy.activation,
        "picker": picker,
        "weights_sha256": hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest(),
    }
    (out / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    size = (out / WEIGHTS_FILE).stat().st_size + (out / HEADER_FILE).stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise ValueError(f"exported policy is {size} bytes, over the {MAX_ARTIFACT_BYTES} budget")
    return out
