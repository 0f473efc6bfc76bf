"""Multi-turn text environments: the protocol, adapters, tasks and the token-level driver."""

from marlhf.envs.multiturn.protocol import (
    CheckedTextEnv,
    TextEnv,
    TextEnvError,
    as_text_env,
)

__all__ = ["CheckedTextEnv", "TextEnv", "TextEnvError", "as_text_env"]
