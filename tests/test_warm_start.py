"""Starting a run from an exported policy (training/warm_start.py): the imported actor is the
export, a mismatched one is one clear error, and the actor stays fixed while the critic warms up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th
from random_policy import ENCODER, make_policy
from test_training_policy import random_obs, scores

from envs.env import policy_spaces
from rl_lb.cli import main
from rl_lb.errors import ConfigError, ModelError
from rl_lb.policies.learned import SHIPPED_DIR, LearnedPolicy
from training.config import load_config
from training.export import export_policy
from training.policy import SetActorCriticPolicy
from training.warm_start import actor_parameters, import_actor, with_exported_picker


def fresh(
    slot_net: list[int], head_net: list[int], activation: str = "tanh"
) -> SetActorCriticPolicy:
    th.manual_seed(1)
    return SetActorCriticPolicy(
        *policy_spaces(ENCODER),
        lambda _: 3e-4,
        slot_net=slot_net,
        head_net=head_net,
        critic_net=[16],
        activation=activation,
    )


def test_the_imported_actor_scores_as_the_export(tmp_path: Path) -> None:
    source = make_policy(seed=4)
    export_policy(source, tmp_path, ENCODER, "test@1")
    target = fresh([32, 24], [16])
    obs = random_obs(np.random.default_rng(2), 16)
    assert not np.allclose(scores(target, obs), scores(source, obs), atol=1e-3)
    critic_before = [p.clone() for p in target.mlp_extractor.critic_phi.parameters()]
    assert import_actor(target, tmp_path) == "test@1"
    np.testing.assert_allclose(scores(target, obs), scores(source, obs), rtol=1e-5, atol=1e-6)
    critic_after = list(target.mlp_extractor.critic_phi.parameters())
    assert all(th.equal(a, b) for a, b in zip(critic_before, critic_after, strict=True))


def test_the_shipped_policy_imports_into_its_architecture() -> None:
    shipped = LearnedPolicy.load(SHIPPED_DIR)
    arch = shipped.header["architecture"]
    target = fresh(arch["slot_net"], arch["head_net"], shipped.header["activation"])
    import_actor(target, SHIPPED_DIR)
    obs = random_obs(np.random.default_rng(3), 4)
    for row, got in zip(obs, scores(target, obs), strict=True):
        present = row[:, 0] > 0.5
        expected = shipped.network.scores(row[present])
        np.testing.assert_allclose(got[present], expected, rtol=1e-4, atol=1e-5)


def test_another_architecture_is_one_config_error(tmp_path: Path) -> None:
    export_policy(make_policy(), tmp_path, ENCODER, "test@1")
    with pytest.raises(ConfigError, match=r"slot_net=\[32, 24\].*slot_net=\[64, 64\]"):
        import_actor(fresh([64, 64], [16]), tmp_path)
    with pytest.raises(ConfigError, match="relu"):
        import_actor(fresh([32, 24], [16], "relu"), tmp_path)


def test_a_corrupt_export_is_a_model_error(tmp_path: Path) -> None:
    export_policy(make_policy(), tmp_path, ENCODER, "test@1")
    (tmp_path / "policy.npz").write_bytes(b"not an archive")
    with pytest.raises(ModelError, match="checksum"):
        import_actor(fresh([32, 24], [16]), tmp_path)


def test_the_actor_parameters_are_what_the_export_holds_and_the_log_std() -> None:
    policy = fresh([32, 24], [16])
    names = {id(p): n for n, p in policy.named_parameters()}
    chosen = {names[id(p)] for p in actor_parameters(policy)}
    served = ("mlp_extractor.phi", "mlp_extractor.rho", "action_net")
    assert chosen == {n for n in names.values() if n.startswith(served)} | {"log_std"}


def test_a_critic_warmup_needs_a_policy_to_start_from() -> None:
    """Checked when the run starts, not when the file loads: `make policy` gives its stage 4
    the policy to start from on the command line."""
    config = load_config(None, {"critic_warmup_steps": 100})
    with pytest.raises(ConfigError, match="no policy to start from"):
        config.check_start(None)
    load_config(None, {"critic_warmup_steps": 100, "init": "x"}).check_start(None)
    with pytest.raises(ConfigError, match="critic_warmup_steps"):
        load_config(None, {"critic_warmup_steps": -1})


def test_a_bad_policy_to_start_from_is_one_line_and_exit_2_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlruns.db"
    assert main(["train", "--init", "nowhere", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: nowhere: no such model file or directory (give a policy directory or .npz)"
    ]
    assert not (tmp_path / "mlruns.db").exists(), "nothing was started"


def test_a_run_from_an_export_trains_with_its_picker_unless_told(tmp_path: Path) -> None:
    export_policy(make_policy(), tmp_path, ENCODER, "test@1", picker="prequal")
    started = with_exported_picker(load_config(None, {"init": str(tmp_path)}))
    assert started.picker == "prequal"
    told = load_config(None, {"init": str(tmp_path)})
    told.env = {"picker": "p2c-latency"}
    assert with_exported_picker(told).picker == "p2c-latency"
    assert with_exported_picker(load_config(None)).picker == load_config(None).picker
