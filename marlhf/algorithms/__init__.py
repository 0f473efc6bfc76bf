"""Algorithms: PPO and MAPPO with SB3-style interfaces, their config and presets, the rollout buffer
and the iteration's stages. The package-level names are the old ``marlhf.agents`` facade."""

# Registers the turn-level estimators, estimator specs with options and weighted sums, and the
# turn-level presets (import side effects, so every entry point that imports agents sees them).
from marlhf.algorithms import turn_presets as _turn_presets  # noqa: F401
from marlhf.algorithms.base import LMOnPolicyAlgorithm
from marlhf.algorithms.buffer import LMRolloutBuffer, RolloutSamples
from marlhf.algorithms.config import (
    PRESETS,
    CreditConfig,
    KLConfig,
    LossConfig,
    MAPPOConfig,
    OptimConfig,
    PPOConfig,
    Preset,
    SamplingConfig,
    SystemsConfig,
    available_presets,
)
from marlhf.algorithms.mappo import MAPPO
from marlhf.algorithms.ppo import PPO
from marlhf.algorithms.user_presets import register_preset
from marlhf.credit import combine as _combine  # noqa: F401
from marlhf.credit import turn_credit as _turn_credit  # noqa: F401
from marlhf.credit.estimators import (
    Estimate,
    EstimatorBatch,
    available_estimators,
    register_estimator,
)
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState

__all__ = [
    "MAPPO",
    "PPO",
    "PRESETS",
    "CausalLMActorCritic",
    "CreditConfig",
    "Estimate",
    "EstimatorBatch",
    "GenerationState",
    "KLConfig",
    "LMOnPolicyAlgorithm",
    "LMRolloutBuffer",
    "LossConfig",
    "MAPPOConfig",
    "OptimConfig",
    "PPOConfig",
    "Preset",
    "RolloutSamples",
    "SamplingConfig",
    "SystemsConfig",
    "available_estimators",
    "available_presets",
    "register_estimator",
    "register_preset",
]
