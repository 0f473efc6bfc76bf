"""One run path: the run request (built once, serialisable, the same in-process and in a
worker) and the command line's exit status (configuration errors 2, errors inside a run 1)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from marlhf.algorithms.config import MAPPOConfig, PPOConfig
from marlhf.cli.main import main
from marlhf.commands import compare
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import ConfigError, load_config
from marlhf.options import registry
from marlhf.runs import runner
from marlhf.runs.errors import during_run, is_config_error
from marlhf.runs.request import RunRequest
from marlhf.runs.runner import agent_from_config, build_env_and_model
from tests.training.conftest import TINY, sets

FEW = [*TINY, "seeds=[0, 1]", "terminations=[ngram:3]", "agents=[grpo, rloo@ngram:2]"]


def _config(tmp_path: Path, *extra: str) -> CompareConfig:
    return load_config(CompareConfig, overrides=[*FEW, f"output_dir={tmp_path / 'c'}", *extra])


class InlinePool:
    """``ProcessPoolExecutor``'s surface as compare uses it, running each call here at once (so
    the worker's entry point runs in this process, where the test can watch it)."""

    def __init__(self, max_workers: int, mp_context: Any, initializer: Any, initargs: Any):
        compare._progress_queue = initargs[0]  # what the worker's initializer keeps

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return future


@pytest.fixture
def inline_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare's worker path in this process, leaving this process's thread settings alone."""
    monkeypatch.setattr(compare, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(compare, "_progress_queue", None)
    monkeypatch.setattr(compare, "apply_thread_policy", lambda threads=None: threads)


def test_requests_are_resolved_once_and_round_trip(tmp_path: Path) -> None:
    config = _config(tmp_path)
    requests = compare.validate(config)
    assert [r.spec.name for r in requests] == [s.name for s in compare.run_specs(config)]
    by_name = {r.spec.name: r for r in requests}
    grpo, rloo = by_name["grpo-token-seed1"], by_name["rloo-ngram_2-seed0"]
    mappo, ppo = by_name["mappo-ngram_3-seed0"], by_name["ppo-token-seed0"]
    # The run's presets on top of the section's, the user's keys explicit.
    assert type(grpo.config) is PPOConfig and grpo.preset == ["toy", "grpo"]
    assert (
        grpo.config.credit.estimator,
        grpo.config.credit.grpo.group_std,
        grpo.config.optim.batch_size,
    ) == (
        "grpo",
        True,
        4,
    )
    assert type(rloo.config) is MAPPOConfig and rloo.config.credit.termination == "ngram:2"
    assert type(mappo.config) is MAPPOConfig and mappo.preset is None
    assert (mappo.config.credit.termination, ppo.config.credit.termination) == ("ngram:3", None)
    assert ppo.folder == str(tmp_path / "c" / "runs" / "ppo-token-seed0")
    for request in requests:
        text = json.dumps(request.to_dict())  # plain JSON values
        assert RunRequest.from_dict(json.loads(text)) == request


def test_decoding_a_request_applies_no_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = next(r for r in compare.validate(_config(tmp_path)) if r.spec.agent == "grpo")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("presets resolved again")

    monkeypatch.setattr("marlhf.algorithms.config.resolve_config", refuse)
    monkeypatch.setattr("marlhf.algorithms.presets.resolve_config", refuse)
    monkeypatch.setattr("marlhf.runs.request.resolve_config", refuse)
    assert RunRequest.from_dict(request.to_dict()) == request


def test_a_bad_request_names_the_field(tmp_path: Path) -> None:
    data = compare.validate(_config(tmp_path))[0].to_dict()
    data["config"]["kl_estimator"] = "k9"
    with pytest.raises(ConfigError, match=r"agent\.kl_estimator"):
        RunRequest.from_dict(data)


def test_the_agent_has_the_request_config(tmp_path: Path) -> None:
    request = next(r for r in compare.validate(_config(tmp_path)) if r.spec.agent == "rloo")
    env, lm, _ = build_env_and_model(request.task, request.model, request.spec.seed, "cpu")
    algo = agent_from_config(request.spec, request.config, request.preset, lm, env, "cpu", None)
    assert type(algo).__name__ == "MAPPO"
    assert algo.config == request.config and algo.preset == ["toy", "rloo"]


def test_worker_and_in_process_paths_receive_equal_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline_workers: None
) -> None:
    config = _config(tmp_path)
    requests = compare.validate(config)
    seen: dict[str, list[RunRequest]] = {"in-process": [], "worker": []}
    for path, workers in (("in-process", 1), ("worker", 2)):

        def execute(request: RunRequest, progress: Any = None, _path: str = path) -> Any:
            seen[_path].append(request)
            return {"run": request.spec.name}

        monkeypatch.setattr(compare, "execute", execute)
        results = compare._train_all(
            dataclasses.replace(config, workers=workers), requests, "off", False
        )
        assert sorted(r["run"] for r in results) == sorted(r.spec.name for r in requests)
    assert seen["in-process"] == requests
    assert seen["worker"] == requests  # decoded from their JSON form in the worker
    assert all(a is not b for a, b in zip(seen["worker"], requests, strict=True))


# ---------------------------------------------------------------------------- exit statuses
def test_config_errors_are_two_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *sets("agent.no_such_knob=1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'agent.no_such_knob'" in err and "agent.kl_coef" in err  # the key, the valid keys
    assert main(["compare", *sets("agent.kl_estimator=k9")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'agent.kl_estimator'" in err and "'k3'" in err


def _boom(*args: Any, **kwargs: Any) -> None:
    raise ValueError("boom inside the run")


@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_error_inside_a_run_is_one_with_its_traceback(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner.MetricsRecorder, "write", _boom)  # the first log of the run
    argv = [command, *sets(*TINY, "total_timesteps=64", f"output_dir={tmp_path / 'o'}")]
    if command == "compare":
        argv += sets("seeds=[0]", "agents=[]", "workers=1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_boom" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"marlhf {command}: error: ValueError: boom inside the run (raised inside the run"
        )
    )


def test_a_worker_error_names_the_log_of_its_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inline_workers: None,
) -> None:
    monkeypatch.setattr(runner.MetricsRecorder, "write", _boom)
    out = tmp_path / "o"
    argv = sets(*TINY, "total_timesteps=64", "seeds=[0]", "agents=[]", f"output_dir={out}")
    assert main(["compare", *argv, *sets("workers=2")]) == 1
    err = capsys.readouterr().err
    logs = {
        name: out / "runs" / name / "error.log"
        for name in ("ppo-token-seed0", "mappo-ngram_5-seed0")
    }
    for name, log in logs.items():
        assert f"{name}: ValueError: boom inside the run (traceback in {log})" in err
        assert "Traceback" in log.read_text() and "_boom" in log.read_text()
    assert "Traceback" not in err  # one line per run; the traceback is in the log


@pytest.fixture
def forget_terminations() -> Iterator[None]:
    """The terminations a test registers are forgotten after it."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


FAILING_TERMINATION = """
from marlhf.options import Termination, register_termination


@register_termination("fails_in_run")
class FailsInRun(Termination):
    def starts(self, batch):
        raise ValueError("boom inside a worker")
"""


@pytest.mark.slow  # two worker processes start (each imports torch and transformers)
def test_real_worker_errors_leave_their_traceback_in_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forget_terminations: None
) -> None:
    module = tmp_path / "failing_termination.py"
    module.write_text(FAILING_TERMINATION)
    out = tmp_path / "o"
    argv = [*TINY, "seeds=[0, 1]", "include_ppo=false", "agents=[]", "total_timesteps=64"]
    argv += ["terminations=[fails_in_run]", "workers=2", f"output_dir={out}"]
    assert main(["compare", "--import", str(module), *sets(*argv)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err  # one line per run on stderr
    for seed in (0, 1):
        log = out / "runs" / f"mappo-fails_in_run-seed{seed}" / "error.log"
        assert f"ValueError: boom inside a worker (traceback in {log})" in err
        text = log.read_text()
        assert "Traceback" in text and "failing_termination.py" in text  # the worker's frames


@pytest.mark.slow  # the first rm of a process imports transformers' classifier models (~20 s)
def test_an_error_inside_rm_training_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from marlhf.commands import reward_modeling

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"chosen": "a good answer", "rejected": "a bad one"}\n' * 4)
    monkeypatch.setattr(reward_modeling, "_scores", _boom)  # the first forward of the model
    argv = sets(f"data={data}", "vocab_size=300", "model.n_layer=1", "model.n_embd=16")
    assert main(["rm", *argv, *sets("model.n_head=2", f"output_dir={tmp_path / 'rm'}")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
        "marlhf rm: error: ValueError: boom inside the run (raised inside the run"
    )


def test_config_errors_are_told_from_errors_inside_a_run() -> None:
    def raised(err: Exception, inside: bool) -> BaseException:
        try:
            if inside:
                with during_run():
                    raise err
            raise err
        except Exception as caught:
            return caught

    assert is_config_error(raised(ValueError("bad"), inside=False))
    assert not is_config_error(raised(ValueError("bug"), inside=True))
    assert is_config_error(raised(ConfigError("bad key"), inside=True))
    assert not is_config_error(raised(RuntimeError("bug"), inside=False))
    assert not is_config_error(raised(KeyError("bug"), inside=False))
