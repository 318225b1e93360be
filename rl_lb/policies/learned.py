"""The learned policy as the proxy runs it: a numpy forward pass over an exported set network.

Training (`training/export.py`) writes two files side by side: `policy.npz` (the actor's weights)
and `policy.json` (what those weights mean: the feature layout they were trained on, the
architecture, the activation, a version and the training run). Loading checks everything a
mismatch could silently get wrong (layout, shapes, finite weights) and refuses with one
`ModelError` line, because a policy fed the wrong columns would still produce plausible weights.

A spec such as `models:/rl-lb-policy/3` names a model in a registry, not a file. The core does
not talk to registries (that would bring MLflow into the proxy's core): a resolver registered for
the URI's scheme turns it into a local directory first. Wings declare resolvers in the
`rl_lb.model_resolvers` entry-point group (`models` → `serving.registry:resolve`), loaded by
name only when such a spec is given, as `rl_lb.cli` loads the wings' commands.

The network (see `training/policy.py` for why it is shaped so): a shared per-slot MLP `phi`, the
masked mean of its output over present slots, a shared MLP `rho` over `[slot, mean]`, a
bias-free linear score per slot, 0 for absent slots. Nothing in it depends on the number of
slots, so one model file serves a pool of any size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from rl_lb.errors import ModelError
from rl_lb.features import FeatureEncoder
from rl_lb.pickers import PICKER_NAMES
from rl_lb.tracking_store import DEFAULT_TRACKING_URI
from rl_lb.types import FloatArray, PoolSnapshot

__all__ = [
    "DEFAULT_PICKER",
    "DEFAULT_TRACKING_URI",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_FILE",
    "MODEL_RESOLVER_GROUP",
    "POOLING",
    "REGISTERED_MODEL",
    "RUN_POLICY_FOLDERS",
    "SHIPPED_DIR",
    "WEIGHTS_FILE",
    "LearnedPolicy",
    "ModelResolver",
    "SetNetwork",
    "register_model_resolver",
    "uri_scheme",
]

FORMAT = "rl-lb-policy"
FORMAT_VERSION = 1
HEADER_FILE = "policy.json"
WEIGHTS_FILE = "policy.npz"
SHIPPED_DIR = Path(__file__).parent / "shipped"
REGISTERED_MODEL = "rl-lb-policy"
DEFAULT_PICKER = "p2c"
"""The picker of a policy whose header names none (the simulator environment's default)."""

Float32Array = npt.NDArray[np.float32]
Layer = tuple[Float32Array, Float32Array]

_ACTIVATIONS: dict[str, Callable[[Float32Array], Float32Array]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
}


_blas: ThreadpoolController | None = None


def _one_blas_thread() -> Any:
    """A context in which numpy's BLAS computes on one thread.

    The forward pass multiplies (pool × 64) matrices: far too small for BLAS threads to pay,
    and on a busy machine their spin-waits collapse. Measured on the shared 2-core VM at load
    12, a 245-backend episode of the learned balancer: 7.0-8.9 s wall and 2.1-2.3 s CPU with
    OpenBLAS's default two threads, 1.4-1.6 s wall and 0.4-0.5 s CPU with one. The limit is
    set and restored around each pass (about 40 µs), so the host process's BLAS is untouched.
    """
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class SetNetwork:
    """The actor's deterministic forward pass. Weights are stored transposed, (in, out)."""

    phi: tuple[Layer, ...]
    rho: tuple[Layer, ...]
    head: Float32Array
    activation: str

    def scores(self, observation: npt.NDArray[np.floating[Any]]) -> Float32Array:
        """Unclipped scores (..., slots) for observations (..., slots, features)."""
        with _one_blas_thread():
            return self._scores(observation)

    def _scores(self, observation: npt.NDArray[np.floating[Any]]) -> Float32Array:
        act = _ACTIVATIONS[self.activation]
        x = np.asarray(observation, dtype=np.float32)
        mask = x[..., 0] > 0.5
        h = x
        for weight, bias in self.phi:
            h = act(h @ weight + bias)
        present = mask[..., None]
        count = np.maximum(present.sum(axis=-2), 1).astype(np.float32)
        pooled = (np.where(present, h, np.float32(0.0)).sum(axis=-2) / count)[..., None, :]
        z = np.concatenate([h, np.broadcast_to(pooled, (*h.shape[:-1], pooled.shape[-1]))], -1)
        for weight, bias in self.rho:
            z = act(z @ weight + bias)
        return (z @ self.head) * mask


POOLING = ("mean",)
"""How the slots' embeddings are summarised: a mean does not grow with the pool as a max does."""

MAX_FILE_BYTES = 16 * 2**20
"""Far above any exported policy (the shipped one is under 100 KB)."""


def _fail(where: Path | str, what: str, fix: str = "") -> ModelError:
    return ModelError(str(where), what, fix or "re-export it with `rl-lb train` or pick another")


ModelResolver = Callable[[str], Path]
"""A registry URI → the local directory (or file) of the policy; a `ModelError` when it cannot."""

MODEL_RESOLVER_GROUP = "rl_lb.model_resolvers"
"""Entry-point group of the resolvers: the name is the URI scheme, the value a `ModelResolver`."""

_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/")
"""A scheme of two letters or more, so that a Windows drive (`C:/models`) stays a path."""

_resolvers: dict[str, ModelResolver] = {}


def uri_scheme(spec: str) -> str | None:
    """`models` for `models:/rl-lb-policy/3`; None for a file path."""
    match = _URI.match(spec)
    return match["scheme"].lower() if match else None


def register_model_resolver(scheme: str, resolver: ModelResolver) -> None:
    """Resolve `SCHEME:/...` specs with `resolver` in this process, before any entry point."""
    _resolvers[scheme.lower()] = resolver


def _resolver(scheme: str, uri: str) -> ModelResolver:
    """The resolver of `scheme`: registered in-process, else the installed entry point of that
    name (imported only now: a proxy given file paths never loads a registry client)."""
    if scheme in _resolvers:
        return _resolvers[scheme]
    found = entry_points(group=MODEL_RESOLVER_GROUP, name=scheme)
    if not found:
        known = sorted({e.name for e in entry_points(group=MODEL_RESOLVER_GROUP)} | {*_resolvers})
        schemes = " or a " + ", ".join(f"{k}:/" for k in known) + " URI" if known else ""
        raise ModelError(
            uri, f"no resolver for {scheme}:/ URIs is installed", f"give a path{schemes}"
        )
    entry = next(iter(found))
    try:
        resolver: ModelResolver = entry.load()
    except ImportError as error:
        raise ModelError(
            uri, f"the {scheme}:/ resolver {entry.value} cannot load: {error}", "reinstall rl-lb"
        ) from None
    _resolvers[scheme] = resolver
    return resolver


def _resolve(spec: str | Path | None) -> tuple[Path, Path]:
    """The (header, weights) pair a spec names: the shipped pair, a directory, or either file."""
    if spec is None:
        path = SHIPPED_DIR
        if not (path / HEADER_FILE).exists():
            raise ModelError(
                str(path), "no shipped policy in this install", "run `make policy` to train it"
            )
    elif (scheme := uri_scheme(str(spec))) is not None:
        path = _resolver(scheme, str(spec))(str(spec))
    else:
        path = Path(spec).expanduser()
    if path.is_dir():
        return _policy_folder(path) / HEADER_FILE, _policy_folder(path) / WEIGHTS_FILE
    if path.suffix == ".npz":
        return path.with_suffix(".json"), path
    if path.suffix == ".json":
        return path, path.with_suffix(".npz")
    if not path.exists():
        raise _fail(path, "no such model file or directory", "give a policy directory or .npz")
    raise _fail(path, "not a policy file", "give a policy directory, its .npz or its .json")


RUN_POLICY_FOLDERS = ("policy", "best_policy")
"""Where a `rl-lb train` run folder (runs/ppo-…) keeps its best policy: the final export, or,
while the run is going, the best checkpoint so far."""


def _policy_folder(path: Path) -> Path:
    """`path`, or the best policy inside it when it is a training run folder."""
    if (path / HEADER_FILE).exists():
        return path
    for name in RUN_POLICY_FOLDERS:
        if (path / name / HEADER_FILE).exists():
            return path / name
    return path


def _check_file(path: Path, kind: str, sibling: str) -> None:
    """Only a regular file of a plausible size is read: a FIFO, a device or a huge file would
    hang or swamp the control loop that loads it."""
    if not path.exists():
        raise _fail(path, f"missing model {kind}", f"it must sit next to its {sibling}")
    if not path.is_file():
        raise _fail(path, f"the model {kind} is not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _fail(path, f"the model {kind} is over {MAX_FILE_BYTES // 2**20} MiB")


def _read_header(path: Path) -> dict[str, Any]:
    _check_file(path, "header", WEIGHTS_FILE)
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"corrupt model header: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, f'not an {FORMAT} header (no "format": "{FORMAT}")')
    if header.get("format_version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"model format {header.get('format_version')!r}, this rl-lb reads {FORMAT_VERSION}",
            "re-export the model with this version of rl-lb",
        )
    picker = header.get("picker", DEFAULT_PICKER)
    if picker not in PICKER_NAMES:
        raise _fail(
            path,
            f"trained with an unknown picker {picker!r}",
            f"this rl-lb has {', '.join(PICKER_NAMES)}",
        )
    return header


def _read_weights(path: Path, header: dict[str, Any]) -> dict[str, Float32Array]:
    _check_file(path, "weights", HEADER_FILE)
    digest = header.get("weights_sha256")
    if digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise _fail(path, "weights do not match their header's checksum (corrupt or swapped)")
    try:
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise _fail(path, "corrupt model weights: not an .npz archive")
            with loaded as archive:
                return {key: np.asarray(archive[key], dtype=np.float32) for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _fail(path, f"corrupt model weights: {error}") from None


def _check_layout(header: dict[str, Any], where: Path) -> FeatureEncoder:
    layout = header.get("layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("history"), int):
        raise _fail(where, "the header records no feature layout")
    try:
        encoder = FeatureEncoder(history=layout["history"])
    except ValueError as error:
        raise _fail(where, f"bad feature layout: {error}") from None
    expected = encoder.layout()
    if layout.get("version") != expected["version"]:
        raise _fail(
            where,
            f"feature layout version {layout.get('version')!r} (this rl-lb reads "
            f"{expected['version']}: pools of any size, no 16-backend maximum)",
            "retrain the policy with this rl-lb (`make policy`, or `rl-lb train`)",
        )
    if layout != expected:
        differing = sorted(
            k for k in expected.keys() | layout.keys() if layout.get(k) != expected.get(k)
        )
        raise _fail(
            where,
            f"feature layout mismatch ({', '.join(differing)} differ from this rl-lb's encoder)",
            "retrain the policy against the current features",
        )
    return encoder


def _build_network(
    header: dict[str, Any], weights: dict[str, Float32Array], n_features: int, where: Path
) -> SetNetwork:
    arch = header.get("architecture")
    arch = arch if isinstance(arch, dict) else {}
    activation = header.get("activation")
    try:
        slot_net = [int(n) for n in arch["slot_net"]]
        head_net = [int(n) for n in arch["head_net"]]
    except (KeyError, TypeError, ValueError):
        slot_net = head_net = []
    if not slot_net or not head_net or activation not in _ACTIVATIONS:
        raise _fail(where, "the header's architecture or activation is missing or unknown")
    if arch.get("pool") != list(POOLING):
        raise _fail(
            where,
            f"pooled with {arch.get('pool')!r}, this rl-lb pools with {list(POOLING)}",
            "retrain the policy with this rl-lb",
        )

    def layers(prefix: str, sizes: list[int]) -> tuple[Layer, ...]:
        out = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            out.append(
                (take(f"{prefix}.{i}.weight", (n_in, n_out)), take(f"{prefix}.{i}.bias", (n_out,)))
            )
        return tuple(out)

    def take(key: str, shape: tuple[int, ...]) -> Float32Array:
        if key not in weights:
            raise _fail(where, f"weights lack {key!r}")
        array = weights[key]
        if array.shape != shape:
            raise _fail(where, f"weight {key!r} has shape {array.shape}, expected {shape}")
        if not np.all(np.isfinite(array)):
            raise _fail(where, f"weight {key!r} holds NaN or infinite values")
        return np.ascontiguousarray(array)

    return SetNetwork(
        phi=layers("phi", [n_features, *slot_net]),
        rho=layers("rho", [2 * slot_net[-1], *head_net]),
        head=take("head.weight", (head_net[-1],)),
        activation=str(activation),
    )


class LearnedPolicy:
    """`WeightPolicy` from an exported network: encode, score, softmax over live backends.

    Keeps the previous snapshots itself, since the features include their history.
    """

    name = "learned"

    def __init__(
        self, network: SetNetwork, encoder: FeatureEncoder, header: dict[str, Any]
    ) -> None:
        self.network = network
        self.encoder = encoder
        self.header = header
        self.version = str(header.get("version", "unversioned"))
        self.picker = str(header.get("picker", DEFAULT_PICKER))
        """The picker the policy was trained with: its weights mean what they mean under it."""
        self._history: deque[PoolSnapshot] = deque(maxlen=max(encoder.history - 1, 1))

    @classmethod
    def load(cls, spec: str | Path | None = None) -> LearnedPolicy:
        """Load a policy: None → the shipped one; a directory, .npz or .json; `models:/NAME/N`."""
        header_path, weights_path = _resolve(spec)
        header = _read_header(header_path)
        encoder = _check_layout(header, header_path)
        weights = _read_weights(weights_path, header)
        network = _build_network(header, weights, len(encoder.names), weights_path)
        return cls(network, encoder, header)

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        history = tuple(self._history) if self.encoder.history > 1 else ()
        observation = self.encoder.encode(snapshot, history)
        self._history.append(snapshot)
        return self.encoder.decode(self.network.scores(observation), snapshot)

    def reset(self) -> None:
        self._history.clear()
