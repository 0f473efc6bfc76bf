"""Multi-turn text environments: the protocol, adapters, tasks and the token-level driver."""

from marlhf.envs.multiturn.protocol import (
    CheckedTextEnv,
    TextEnv,
    TextEnvError,
    as_text_env,
)
from marlhf.envs.multiturn.task import MultiTurnTask, check_multiturn_task

__all__ = [
    "CheckedTextEnv",
    "MultiTurnTask",
    "TextEnv",
    "TextEnvError",
    "as_text_env",
    "check_multiturn_task",
]
