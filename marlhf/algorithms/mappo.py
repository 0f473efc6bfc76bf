"""MA-PPO: PPO over macro actions (Chai et al., MA-RLHF, ICLR 2025, arXiv 2410.02743).

MAPPO is :class:`marlhf.algorithms.PPO` plus a termination: the rollout, the losses and the update
are PPO's; only the macro starts that GAE and the (optional) macro ratio read come from the
termination. ``MAPPO(termination="ngram:1")`` is token-level PPO exactly.
"""

from __future__ import annotations

from marlhf.algorithms.config import MAPPOConfig, document_hyperparameters
from marlhf.algorithms.ppo import PPO


class MAPPO(PPO):
    """Macro-action PPO: credit assignment over segments cut by a termination rule.

    Takes every argument of :class:`marlhf.algorithms.PPO`; only the default of ``termination``
    differs: ``"ngram:5"``, the paper's best overall choice (``"ngram:10"`` for code). A
    termination is required (``None`` would be token-level PPO: use :class:`PPO`).
    ``MAPPO(..., preset="ma-rlhf-official")`` reproduces the released configuration.

    :hyperparameters:
    """

    config_class = MAPPOConfig
    requires_termination = True


document_hyperparameters(MAPPO, MAPPOConfig)
