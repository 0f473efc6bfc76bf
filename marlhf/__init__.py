"""marlhf: RLHF with macro actions (MA-RLHF, arXiv 2410.02743).

Importing marlhf registers every environment under the ``marlhf/`` namespace.
"""

__version__ = "0.1.0"

from marlhf.envs.registration import register_envs as _register_envs

_register_envs()

# SB3's convention: `from marlhf import PPO, MAPPO` (after the env ids are registered).
from marlhf.agents import MAPPO, PPO  # noqa: E402

__all__ = ["MAPPO", "PPO", "__version__"]
