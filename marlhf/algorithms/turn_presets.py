"""Presets of the published turn-level methods, added to :data:`marlhf.algorithms.presets.PRESETS`.

Each fixes the estimator spec (with its options) that defines the method, names its source, and
lists what marlhf does not reproduce. The estimators are in :mod:`marlhf.credit.turn_credit`;
docs/credit_multiturn.md compares them against the exact truth.
"""

from __future__ import annotations

from marlhf.algorithms.presets import PRESETS, Preset

#: The group methods follow GRPO's KL handling (k3 in the loss) and leave whitening off.
_GROUP = {"normalize_advantage": False, "kl_in": "loss", "kl_estimator": "k3"}

TURN_PRESETS: dict[str, Preset] = {
    "gigpo": Preset(
        fixed={"estimator": "gigpo:omega=1.0;gamma=0.95;std=true", **_GROUP},
        suggested={"group_size": 4},
        source=(
            "GiGPO (arXiv 2505.10978): group-normalised episode return + omega x step advantage "
            "over anchor groups of identical env states (omega 1, gamma 0.95, F_norm = std)"
        ),
        not_reproduced=(
            "anchor states are the env's state_key() at turn starts (the paper hashes the "
            "observation text); an env without state_key() cannot run it",
            "the per-turn rewards include any in-reward KL (kl_in='reward'); the preset puts the "
            "KL in the loss, so they are the env's rewards",
        ),
    ),
    "mt-grpo": Preset(
        fixed={"estimator": "mt_grpo:lam=1.0;std=true", **_GROUP},
        suggested={"group_size": 4},
        source=(
            "MT-GRPO (arXiv 2505.11821): outcome advantage + lambda x turn advantage normalised "
            "per turn index, as published (biased when the policy chooses the number of turns, "
            "verl#7244)"
        ),
        not_reproduced=(
            "the paper has two turns; beyond two, each intermediate turn gets its own reward "
            "normalised over the rows with that intermediate turn (mt_grpo:accumulate=true sums "
            "the later ones in, verifiers PR#1554's form)",
        ),
    ),
    "mt-grpo-fixed": Preset(
        fixed={"estimator": "mt_grpo_fixed:lam=1.0;std=false", **_GROUP},
        suggested={"group_size": 4},
        source=(
            "marlhf's corrected per-turn-index normalisation: intermediate returns-to-go "
            "centred over the rows that reached the turn (verl#7244's action-dependent "
            "baseline removed); unbiased for the total return"
        ),
        not_reproduced=(
            "no std division (MT-GRPO divides by it): per-index stds rescale each turn's term "
            "and bias the update again (exact measurement in docs/credit_multiturn.md); "
            "mt_grpo_fixed:std=true is available",
        ),
    ),
    "turn-gae": Preset(
        fixed={"estimator": "turn_gae:gamma_turn=1.0;lambda_turn=0.95;inner=uniform"},
        source=(
            "multi-turn PPO with a turn-level critic: GAE over turns from the value at each "
            "turn start, the turn's advantage on all its tokens (ArCHer's hierarchy, arXiv "
            "2402.19446, with an on-policy critic)"
        ),
        not_reproduced=(
            "ArCHer's off-policy turn-level Q critic and replay buffer: marlhf's critic is the "
            "policy's value head at turn-start tokens",
        ),
    ),
    "verlog": Preset(
        fixed={
            "estimator": (
                "turn_gae:inner=gae;gamma_turn=0.95;lambda_turn=0.95;gamma_token=1.0;"
                "lambda_token=1.0"
            )
        },
        source=(
            "Verlog's dual-discounting GAE (OpenReview U3yTQonq10): token-level GAE inside a "
            "turn, turn-level discount and lambda across turns"
        ),
        not_reproduced=(
            "Verlog's published gamma/lambda values were not checked (0.95 across turns, 1.0 "
            "inside a turn here)",
            "each turn is not a separate training sample with its own memory window; the whole "
            "episode is one sequence",
            "no critic pre-training and no fixed-turn batching",
        ),
    ),
    "vineppo-turns": Preset(
        fixed={
            "estimator": "turn_mc:gamma=1.0;lam=0.0",
            "termination": "turn",
            "normalize_advantage": False,
            "kl_in": "loss",
            "kl_estimator": "k3",
        },
        suggested={"mc_rollouts": 4, "mc_max_starts": 8},
        source=(
            "VinePPO (arXiv 2410.01679) for agents: Monte-Carlo values from each turn start "
            "(continuations replay the env from its seed and the episode's tokens), TD(0) "
            "over turns"
        ),
        not_reproduced=(
            "VinePPO branches at reasoning steps inside one response; here at turn starts "
            "(mc_max_starts must cover the task's max_turns, else the estimator says so)",
        ),
    ),
    "igpo": Preset(
        fixed={
            "estimator": (
                "turn_potential:source=policy;gamma=1.0;terminal=last;normalize=group_rewards"
            ),
            **_GROUP,
        },
        suggested={"group_size": 4},
        source=(
            "IGPO (arXiv 2510.14967): information-gain turn rewards Phi(s') - Phi(s) from the "
            "policy's belief in the gold answer, the outcome on the final turn, every turn "
            "reward normalised over the group, then summed"
        ),
        not_reproduced=(
            "Phi is log p(gold | s) (the sum of the gold tokens' log-probabilities); IGPO uses "
            "the length-normalised probability exp(mean log p) (turn_potentials.gold_potentials "
            "computes it with kind='mean_prob', not wired to the estimator)",
            "the env must give gold() (ToolLookup and GuessTheNumber do)",
        ),
    ),
    "rebn": Preset(
        fixed={"estimator": "rebn:gamma=0.9", "normalize_advantage": False},
        source=(
            "GEM's ReBN (arXiv 2510.01051): REINFORCE on per-turn discounted returns, "
            "normalised over every turn of the batch"
        ),
        not_reproduced=("gamma 0.9 is marlhf's default; GEM tunes gamma per environment",),
    ),
}


def register_turn_presets() -> None:
    """Add :data:`TURN_PRESETS` to the preset table (a clash with another entry is an error)."""
    for name, preset in TURN_PRESETS.items():
        if name in PRESETS and PRESETS[name] is not preset:
            raise ValueError(f"preset {name!r} is already defined; turn presets cannot replace it")
        PRESETS[name] = preset


register_turn_presets()
