"""Agents: the LM actor-critic, the rollout buffer, PPO and MAPPO with SB3-style interfaces."""

from marlhf.agents.base import LMOnPolicyAlgorithm
from marlhf.agents.buffer import LMRolloutBuffer, RolloutSamples
from marlhf.agents.config import (
    PRESETS,
    MAPPOConfig,
    PPOConfig,
    Preset,
    available_presets,
)
from marlhf.agents.estimators import (
    Estimate,
    EstimatorBatch,
    available_estimators,
    register_estimator,
)
from marlhf.agents.mappo import MAPPO
from marlhf.agents.policy import CausalLMActorCritic, GenerationState
from marlhf.agents.ppo import PPO

__all__ = [
    "MAPPO",
    "PPO",
    "PRESETS",
    "CausalLMActorCritic",
    "Estimate",
    "EstimatorBatch",
    "GenerationState",
    "LMOnPolicyAlgorithm",
    "LMRolloutBuffer",
    "MAPPOConfig",
    "PPOConfig",
    "Preset",
    "RolloutSamples",
    "available_estimators",
    "available_presets",
    "register_estimator",
]
