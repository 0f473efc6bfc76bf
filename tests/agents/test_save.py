"""Atomic checkpoints: a save killed at any write leaves a whole checkpoint, and the resumed run
equals the uninterrupted one; digests, the env's identity, damaged files, old checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from marlhf.algorithms.config import FLAT_KEYS
from marlhf.checkpoint import save_util
from marlhf.tokenization import SymbolCodec
from tests.agents.conftest import SYMBOLS, CueEnv, tiny_model

B, N = 4, 4
KW: dict[str, Any] = {
    "learning_rate": 3e-3,
    "n_epochs": 2,
    "batch_size": 2,
    "seed": 3,
    "device": "cpu",
    "termination": "ngram:2",
    "kl_target": 0.01,  # an adaptive KL controller: its state travels in the zip
}


def _make(**kwargs: Any) -> Any:
    env = CueEnv(B, N, eos=False)
    return MAPPO(tiny_model(env.codec), env, **{**KW, **kwargs})


def _params(algo: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in algo.policy.trainable_parameters()]


def _same(a: Any, b: Any) -> bool:
    return all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))


def _load(path: Path, **kwargs: Any) -> Any:
    return MAPPO.load(path, env=CueEnv(B, N, eos=False), device="cpu", **kwargs)


def _to_version1(path: Path) -> None:
    """Rewrite a checkpoint in the version-1 layout: a real ``<name>_weights`` folder, the
    termination as a spec string, no digests, no env identity."""
    zip_path, link = save_util.checkpoint_paths(path)
    data, state = save_util.read_zip(zip_path)
    folder = zip_path.with_name(data["weights"])
    link.unlink()
    os.replace(folder, link)
    data["weights"] = link.name
    data["hyperparams"]["termination"] = "ngram:2"
    for key in ("weights_sha256", "env", "format", "version"):
        del data[key]
    zip_path.unlink()
    save_util.write_zip(zip_path, data, state)


def _kill_at(step: int) -> Any:
    calls = iter(range(10**6))

    def hook(name: str) -> None:
        if next(calls) == step:
            os._exit(0)  # a kill: no exception handler, no finally, no atexit runs

    return hook


def _save_killed(algo: Any, path: Path, step: int, monkeypatch: Any) -> None:
    """Run ``algo.save(path)`` in a forked child that dies at write step ``step``."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            monkeypatch.setattr(save_util, "write_step", _kill_at(step))
            algo.save(path)
        finally:
            os._exit(3)  # the save finished (or raised): the kill point was not reached
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"kill point {step} was not reached"


def _write_steps(algo: Any, path: Path, monkeypatch: Any) -> list[str]:
    names: list[str] = []
    monkeypatch.setattr(save_util, "write_step", names.append)
    algo.save(path)
    monkeypatch.undo()
    return names


@pytest.mark.parametrize("previous", ["current", "version1"])
def test_a_save_killed_at_every_write_step_leaves_a_whole_checkpoint_that_resumes_exactly(
    tmp_path: Path, monkeypatch: Any, previous: str
) -> None:
    straight = _make().learn(3 * B * N)
    run = _make().learn(B * N)
    run.save(tmp_path / "first" / "ck")
    if previous == "version1":
        _to_version1(tmp_path / "first" / "ck")
    run.learn(B * N, reset_num_timesteps=False)  # the state the killed saves write
    shutil.copytree(tmp_path / "first", tmp_path / "count", symlinks=True)
    steps = _write_steps(run, tmp_path / "count" / "ck", monkeypatch)
    commit = steps.index("committed")
    survived = 0
    for step, name in enumerate(steps):
        folder = tmp_path / f"kill{step}"
        shutil.copytree(tmp_path / "first", folder, symlinks=True)
        _save_killed(run, folder / "ck", step, monkeypatch)
        loaded = _load(folder / "ck")
        assert loaded.num_timesteps == (B * N if step < commit else 2 * B * N), name
        if step >= commit:
            assert _same(loaded, run), name
        loaded.learn(3 * B * N - loaded.num_timesteps, reset_num_timesteps=False)
        assert loaded.num_timesteps == straight.num_timesteps, name
        assert _same(loaded, straight), f"killed after {name!r}: the resumed run diverged"
        # the next save leaves one zip, one link and the one folder it names, nothing else
        loaded.save(folder / "ck")
        left = sorted(p.name for p in folder.iterdir() if p.name.startswith("ck"))
        current = json.loads(zipfile.ZipFile(folder / "ck.zip").read("data.json"))["weights"]
        assert left == sorted(["ck.zip", "ck_weights", current]), name
        assert (folder / "ck_weights").resolve() == (folder / current).resolve()
        survived += 1
    assert survived == len(steps) >= 10
    print(f"kill points survived / tried ({previous} previous checkpoint): {survived}/{len(steps)}")


def test_the_layout_names_a_fresh_folder_and_the_link_loads_in_transformers(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    algo = _make()
    algo.save(tmp_path / "ck")
    first = save_util.read_zip(tmp_path / "ck.zip")[0]["weights"]
    algo.save(tmp_path / "ck")
    data = save_util.read_zip(tmp_path / "ck.zip")[0]
    assert data["weights"] != first and not (tmp_path / first).exists()
    assert (tmp_path / "ck_weights").is_symlink()
    assert "policy/model.safetensors" in data["weights_sha256"]
    assert data["env"]["task"] == "CueEnv" and data["env"]["codec"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "ck_weights" / "policy")
    save_util.remove_checkpoint(tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_weights_changed_after_the_save_are_refused(tmp_path: Path) -> None:
    _make().save(tmp_path / "ck")
    head = tmp_path / "ck_weights" / "value_head.safetensors"
    raw = bytearray(head.read_bytes())
    raw[-1] ^= 1
    head.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"value_head.safetensors.*does not match the SHA-256"):
        _load(tmp_path / "ck")
    head.unlink()
    with pytest.raises(ValueError, match=r"value_head.safetensors.*is missing"):
        _load(tmp_path / "ck")


def test_a_truncated_or_foreign_zip_is_an_error_naming_its_path(tmp_path: Path) -> None:
    _make().save(tmp_path / "ck")
    raw = (tmp_path / "ck.zip").read_bytes()
    (tmp_path / "ck.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"ck\.zip' is truncated, damaged or not a marlhf save"):
        _load(tmp_path / "ck")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text\.zip' is truncated, damaged"):
        _load(tmp_path / "text")
    with zipfile.ZipFile(tmp_path / "sb3.zip", "w") as archive:  # Stable-Baselines3's layout
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", b"")
    with pytest.raises(ValueError, match=r"sb3\.zip' lacks \['data.json', 'state.pt'\]"):
        _load(tmp_path / "sb3")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("data.json", "[1, 2]")
        archive.writestr("state.pt", b"")
    with pytest.raises(ValueError, match=r"other\.zip' is truncated, damaged"):
        _load(tmp_path / "other")


class _OtherCueEnv(CueEnv):
    """The same vocabulary size, another task."""


def test_loading_onto_another_task_or_codec_is_an_error_naming_both(tmp_path: Path) -> None:
    algo = _make().learn(B * N)
    algo.save(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"trained on CueEnv \(codec \w+\); .*_OtherCueEnv") as e:
        MAPPO.load(tmp_path / "ck", env=_OtherCueEnv(B, N, eos=False), device="cpu")
    assert "force=True" in str(e.value) and "differs in task" in str(e.value)
    env = CueEnv(B, N, eos=False)
    env.codec = SymbolCodec(list(reversed(SYMBOLS)), eos=None)  # same size, other tokens
    with pytest.raises(ValueError, match="differs in codec"):
        MAPPO.load(tmp_path / "ck", env=env, device="cpu")
    forced = MAPPO.load(tmp_path / "ck", env=env, device="cpu", force=True)
    assert forced.num_timesteps == B * N and _same(forced, algo)


def test_a_gymnasium_env_records_its_id_and_task_arguments(tmp_path: Path) -> None:
    import gymnasium

    def make(**kwargs: Any) -> Any:
        return gymnasium.make_vec(
            "marlhf/DelayedChoice-v0", num_envs=4, vectorization_mode="vector_entry_point", **kwargs
        )

    env = make(horizon=6, seed=0)
    algo = PPO(tiny_model(env.codec), env, n_epochs=1, batch_size=2, seed=0, device="cpu")
    algo.save(tmp_path / "ck")
    identity = save_util.read_zip(tmp_path / "ck.zip")[0]["env"]
    assert identity["env_id"] == "marlhf/DelayedChoice-v0"
    assert identity["task_kwargs"] == {"horizon": 6}  # not num_envs, seed or the device
    PPO.load(tmp_path / "ck", env=make(horizon=6, seed=5), device="cpu")
    with pytest.raises(ValueError, match=r"\{'horizon': 6\}.*\{'horizon': 7\}.*task_kwargs"):
        PPO.load(tmp_path / "ck", env=make(horizon=7), device="cpu")
    assert PPO.load(tmp_path / "ck", env=make(horizon=7), device="cpu", force=True).n_envs == 4


def test_a_version1_checkpoint_loads_and_the_next_save_upgrades_it(tmp_path: Path) -> None:
    algo = _make().learn(B * N)
    algo.save(tmp_path / "ck")
    _to_version1(tmp_path / "ck")
    assert (tmp_path / "ck_weights").is_dir() and not (tmp_path / "ck_weights").is_symlink()
    loaded = _load(tmp_path / "ck")
    assert loaded.num_timesteps == B * N and _same(loaded, algo)
    assert loaded.termination is not None and loaded.termination.spec == "ngram:2"
    loaded.save(tmp_path / "ck")
    assert (tmp_path / "ck_weights").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["ck.zip", "ck_weights"]
    assert len(list(tmp_path.iterdir())) == 3
    assert _same(_load(tmp_path / "ck"), algo)


def test_hyperparameters_are_saved_by_flat_name_and_load_into_their_groups(
    tmp_path: Path,
) -> None:
    # The saved form is the flat dict (one key per knob, as before the config had groups), so
    # checkpoints saved before and after the groups load alike.
    algo = _make(clip_range=0.1, ent_coef=0.01)
    algo.save(tmp_path / "ck")
    data, _ = save_util.read_zip(tmp_path / "ck.zip")
    assert set(data["hyperparams"]) == set(FLAT_KEYS)
    assert data["hyperparams"]["clip_range"] == 0.1 and data["hyperparams"]["n_epochs"] == 2
    loaded = _load(tmp_path / "ck")
    # (the termination comes back as the rule itself: saved as data, not as its spec)
    assert {**loaded.hyperparams, "termination": None} == {**algo.hyperparams, "termination": None}
    assert (loaded.config.loss.clip_range, loaded.config.loss.ent_coef) == (0.1, 0.01)
    assert loaded.config.optim.learning_rate == 3e-3
    # load's overrides take flat names too
    assert _load(tmp_path / "ck", ent_coef=0.02).config.loss.ent_coef == 0.02


def test_terminations_are_saved_as_data_and_loaded_without_parsing_a_spec(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from marlhf.options import MaxLength, Union, registry

    algo = _make(termination="union:(max_length:3|punctuation:level=sentence)|ngram:5")
    spec = algo.termination.spec
    algo.save(tmp_path / "ck")
    saved = save_util.read_zip(tmp_path / "ck.zip")[0]["hyperparams"]["termination"]
    assert saved == {
        "name": "union",
        "kwargs": {
            "parts": [
                {
                    "termination": {
                        "name": "max_length",
                        "kwargs": {
                            "termination": {
                                "termination": {
                                    "name": "punctuation",
                                    "kwargs": {"level": "sentence"},
                                }
                            },
                            "n": 3,
                        },
                    }
                },
                {"termination": {"name": "ngram", "kwargs": {"n": 5}}},
            ]
        },
    }

    def no_parsing(*args: Any) -> Any:
        raise AssertionError("a spec string was parsed on load")

    monkeypatch.setattr(registry, "parse_spec", no_parsing)
    for cls in (Union, MaxLength):  # the combinators' own spec parsers
        monkeypatch.setattr(cls, "parse_spec_args", no_parsing)
    loaded = _load(tmp_path / "ck")
    assert loaded.termination is not None and loaded.termination.spec == spec


def test_a_data_form_that_rebuilds_another_rule_falls_back_to_the_rules_own_spec(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from marlhf.options import registry

    algo = _make(termination="ngram:3")
    real = registry.termination_config
    monkeypatch.setattr(
        registry,
        "termination_config",
        lambda term: {**real(term), "kwargs": {"n": 4}},  # a writer that loses the value
    )
    algo.save(tmp_path / "ck")
    saved = save_util.read_zip(tmp_path / "ck.zip")[0]["hyperparams"]["termination"]
    assert saved == {"spec": "ngram:3"}
    loaded = _load(tmp_path / "ck")
    assert loaded.termination is not None and loaded.termination.n == 3


def test_load_for_inference_with_another_number_of_envs(tmp_path: Path) -> None:
    algo = _make().learn(B * N)
    algo.save(tmp_path / "ck")
    for n in (2, 3, 8):  # batch_size=2 does not split 3 rows: fine for inference
        env = CueEnv(n, N, eos=False)
        loaded = MAPPO.load(tmp_path / "ck", env=env, device="cpu")
        obs, _ = env.reset(seed=1)
        actions, _ = loaded.predict(obs, deterministic=True)
        assert actions.shape == (n,) and loaded.n_envs == n
    with pytest.raises(ValueError, match="batch_size=2 cannot split a rollout of num_envs=3"):
        MAPPO.load(tmp_path / "ck", env=CueEnv(3, N, eos=False), device="cpu").learn(1)


def test_learn_leaves_no_logger_folder_in_the_temp_dir(tmp_path: Path, monkeypatch: Any) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    algo = _make(verbose=1)
    algo.learn(B * N)
    algo.logger.record("x", 1.0)
    assert list(tmp_path.iterdir()) == []
    algo.tensorboard_log = str(tmp_path / "tb")  # with tensorboard, its folder only
    algo.learn(B * N)
    assert [p.name for p in tmp_path.iterdir()] == ["tb"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_an_unreaped_killed_saver_counts_as_dead() -> None:
    # A worker killed mid-save whose parent died too stays a zombie until someone reaps it (a
    # container's PID 1 may never): its half-written folder must still be cleaned.
    import subprocess
    import time

    from marlhf.checkpoint.save_util import _pid_alive

    child = subprocess.Popen(["sleep", "0.05"])
    deadline = time.monotonic() + 10
    while "Z" not in Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2][:3]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not _pid_alive(child.pid)  # a zombie
    assert _pid_alive(os.getpid())
    child.wait()
    assert not _pid_alive(child.pid)


def test_the_termination_and_monte_carlo_streams_resume_where_they_were(tmp_path: Path) -> None:
    # A random n-gram termination and Monte-Carlo values draw from their own streams every
    # iteration; a checkpoint carries them, so the resumed run segments and branches as the
    # uninterrupted one does (the tests above use a fixed n-gram and no branches).
    kw = {
        "termination": "random_ngram:sizes=1,2,3",
        "estimator": "mc",
        "mc_rollouts": 2,
        "kl_in": "loss",  # (Monte-Carlo values are of task rewards: the KL goes in the loss)
        "kl_estimator": "k3",
    }
    # One iteration per learn() call (the budget counts the continuations' tokens too, so a
    # token budget would not say how many iterations run).
    straight = _make(**kw)
    for _ in range(3):
        straight.learn(1, reset_num_timesteps=False)
    first = _make(**kw).learn(1)
    states = [g.get_state() for g in (first.termination_generator, first.mc_generator)]
    first.save(tmp_path / "ckpt")
    resumed = MAPPO.load(tmp_path / "ckpt", env=CueEnv(B, N, eos=False), device="cpu")
    loaded = (resumed.termination_generator, resumed.mc_generator)
    assert all(torch.equal(s, g.get_state()) for s, g in zip(states, loaded, strict=True))
    for _ in range(2):
        resumed.learn(1, reset_num_timesteps=False)
    assert straight._iteration == resumed._iteration == 3
    assert straight.mc_tokens == resumed.mc_tokens > 0
    for g, h in zip(
        (straight.termination_generator, straight.mc_generator),
        (resumed.termination_generator, resumed.mc_generator),
        strict=True,
    ):
        assert torch.equal(g.get_state(), h.get_state())
    # both streams were drawn from after the checkpoint, so the equality above is not vacuous
    assert not torch.equal(states[0], resumed.termination_generator.get_state())
    assert not torch.equal(states[1], resumed.mc_generator.get_state())
    a, b = straight.rollout_buffer, resumed.rollout_buffer
    assert a is not None and b is not None and torch.equal(a.starts, b.starts)
    for p, q in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(p, q)
