"""Presets of the published turn-level methods, added to :data:`marlhf.algorithms.presets.PRESETS`.

Each fixes the estimator spec (with its options) that defines the method, names its source, and
lists what marlhf does not reproduce. The estimators are in :mod:`marlhf.credit.turn_credit`;
docs/credit_multiturn.md compares them against the exact truth.
"""

from __future__ import annotations

from marlhf.algorithms.presets import PRESETS, Preset

#: The group methods follow GRPO's KL handling (k3 in the loss) and leave whitening off.
_GROUP = {"normalize_advantage": False, "kl_in": "loss", "kl_estimator": "k3"}

#: Each preset's estimator spec, named once (the preset fixes it; ``source_settings`` compares).
GIGPO = "gigpo:omega=1.0;gamma=0.95;std=true"
MT_GRPO = "mt_grpo:lam=1.0;std=true"
TURN_GAE = "turn_gae:gamma_turn=1.0;lambda_turn=0.95;inner=uniform"
#: Verlog's blog post (WentseChen/Verlog_blogpost, "Dual Discounting GAE"): gamma_step 0.99,
#: lambda_step 0.95, gamma_token 1.0, lambda_token 1.0.
VERLOG = "turn_gae:inner=gae;gamma_turn=0.99;lambda_turn=0.95;gamma_token=1.0;lambda_token=1.0"
IGPO = "turn_potential:source=policy;kind=mean_prob;gamma=1.0;terminal=last;normalize=group_rewards"
TRACE = (
    "turn_potential:source=reference;kind=logprob;gamma=1.0;terminal=zero;normalize=group_returns"
)

TURN_PRESETS: dict[str, Preset] = {
    "gigpo": Preset(
        fixed={"estimator": GIGPO, **_GROUP},
        suggested={"group_size": 4},
        source=(
            "GiGPO (arXiv 2505.10978): group-normalised episode return + omega x step advantage "
            "over anchor groups of identical env states (omega 1, gamma 0.95, F_norm = std)"
        ),
        source_settings={"estimator": GIGPO, **_GROUP},
        not_reproduced=(
            "anchor states are the env's state_key() at turn starts (the paper hashes the "
            "observation text); an env without state_key() cannot run it",
            "the per-turn rewards include any in-reward KL (kl_in='reward'); the preset puts the "
            "KL in the loss, so they are the env's rewards",
            "group_size 4 fits the toy tasks (the paper's group size was not checked)",
        ),
    ),
    "mt-grpo": Preset(
        fixed={"estimator": MT_GRPO, **_GROUP},
        suggested={"group_size": 4},
        source=(
            "MT-GRPO (arXiv 2505.11821): outcome advantage + lambda x turn advantage normalised "
            "per turn index, as published (biased when the policy chooses the number of turns, "
            "verl#7244)"
        ),
        source_settings={"estimator": MT_GRPO, **_GROUP},
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
            "baseline removed); unbiased for the total return. Its source settings are "
            "MT-GRPO's, which it corrects"
        ),
        source_settings={"estimator": "mt_grpo_fixed:lam=1.0;std=true", **_GROUP},
        not_reproduced=(
            "estimator: no std division (MT-GRPO divides by it): per-index stds rescale each "
            "turn's term and bias the update again (exact measurement in "
            "docs/credit_multiturn.md); mt_grpo_fixed:std=true is available",
        ),
    ),
    "turn-gae": Preset(
        fixed={"estimator": TURN_GAE},
        source=(
            "multi-turn PPO with a turn-level critic: GAE over turns from the value at each "
            "turn start, the turn's advantage on all its tokens (ArCHer's hierarchy, arXiv "
            "2402.19446, with an on-policy critic)"
        ),
        source_settings={},
        not_reproduced=(
            "no source settings recorded: the preset is the hierarchy, not one paper's "
            "configuration; gamma_turn 1.0 and lambda_turn 0.95 are PPO's usual values, not "
            "ArCHer's (not checked)",
            "ArCHer's off-policy turn-level Q critic and replay buffer: marlhf's critic is the "
            "policy's value head at turn-start tokens",
        ),
    ),
    "verlog": Preset(
        fixed={"estimator": VERLOG},
        source=(
            "Verlog's dual-discounting GAE (github.com/WentseChen/Verlog and its blog post; "
            "workshop paper OpenReview 6CE5PLsZdW): token-level GAE inside a turn (gamma, "
            "lambda 1.0), turn-level gamma 0.99 and lambda 0.95 across turns, the KL in the reward"
        ),
        source_settings={"estimator": VERLOG, "kl_in": "reward"},
        not_reproduced=(
            "each turn is not a separate training sample with its own memory window (Verlog "
            "keeps the last n+1 turns, n = 1 or 2); the whole episode is one sequence",
            "no critic warm-up (Verlog: w_epoch 40, w_iter 5 with the actor frozen), no extra "
            "critic-loss weight on each turn's first token, no fixed-turn batching with value "
            "bootstrapping of unfinished episodes",
            "Verlog's 0.1 penalty for invalid actions and its default-action substitution are "
            "env design, not credit: marlhf's tasks set their own",
        ),
    ),
    "vineppo-turns": Preset(
        fixed={
            "estimator": "turn_mc:gamma=1.0;lam=0.0",
            "termination": "turn",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
        },
        suggested={"mc_rollouts": 4, "mc_max_starts": 8, "kl_coef": 1e-4},
        source=(
            "VinePPO (arXiv 2410.01679) for agents: Monte-Carlo values from each turn start "
            "(continuations replay the env from its seed and the episode's tokens), TD(0) "
            "over turns; the KL and whitening of the vineppo preset"
        ),
        source_settings={
            "estimator": "turn_mc:gamma=1.0;lam=0.0",
            "normalize_advantage": True,
            "kl_in": "loss",
            "kl_estimator": "k3",
            "kl_clamp": 10.0,
            "kl_coef": 1e-4,
            "mc_rollouts": 9,
        },
        not_reproduced=(
            "VinePPO branches at reasoning steps inside one response; here at turn starts "
            "(mc_max_starts must cover the task's max_turns, else the estimator says so)",
            "mc_rollouts 4 fits the toy tasks' compute budget (released: 9)",
        ),
    ),
    "igpo": Preset(
        fixed={"estimator": IGPO, **_GROUP},
        suggested={"group_size": 4},
        source=(
            "IGPO (arXiv 2510.14967): information-gain turn rewards Phi(s') - Phi(s), Phi the "
            "policy's length-normalised probability of the gold answer, the outcome on the "
            "final turn, every turn reward normalised over the group, then summed"
        ),
        source_settings={"estimator": IGPO, **_GROUP},
        not_reproduced=(
            "the sum over turns is undiscounted (gamma 1); IGPO's released discount was not "
            "checked",
            "the env must give gold() (ToolLookup and GuessTheNumber do)",
        ),
    ),
    "trace": Preset(
        fixed={"estimator": TRACE, **_GROUP},
        suggested={"group_size": 4},
        source=(
            "potential-based turn rewards from a frozen model's belief in the gold answer: "
            "Phi(s) = log p(gold | s) under the reference, r_k + Phi(s') - Phi(s) with Phi 0 "
            "after the last turn (policy-invariant at gamma 1). Issue 25 names this TRACE; the "
            "published method found with this definition is TIPS (arXiv 2603.22293: a frozen "
            "or refreshed teacher's log-likelihood of the correct answer, trained with PPO); "
            "the TRACE found (arXiv 2606.11119) allocates rollouts and is not this"
        ),
        source_settings={
            "estimator": (
                "turn_potential:source=reference;kind=logprob;gamma=1.0;terminal=zero;"
                "normalize=none"
            )
        },
        not_reproduced=(
            "estimator: TIPS trains PPO with a critic on the shaped rewards (normalize=none, "
            "the critic as baseline); turn_potential has no critic path, so the preset centres "
            "and scales the shaped returns over the group (normalize=group_returns)",
            "the teacher is the frozen reference for the whole run; TIPS may refresh it "
            "periodically from the policy",
            "the env must give gold() (ToolLookup and GuessTheNumber do)",
        ),
    ),
    "rebn": Preset(
        fixed={"estimator": "rebn:gamma=0.9", "normalize_advantage": False},
        source=(
            "GEM's ReBN (arXiv 2510.01051; axon-rl/gem examples/train_oat/train_oat.py): "
            "REINFORCE on per-turn discounted returns, normalised over every turn of the batch"
        ),
        source_settings={"estimator": "rebn:gamma=1.0", "normalize_advantage": False},
        not_reproduced=(
            "estimator: GEM's reference script defaults to gamma 1.0 (norm_return on); the "
            "paper studies gamma < 1 for tasks where the policy chooses the number of turns "
            "(shorter solutions worth more), so marlhf keeps 0.9 (rebn:gamma=1.0 is the "
            "script's default)",
            "GEM divides by the population std + 1e-9 over all ranks' turns; marlhf by the "
            "unbiased std + 1e-6",
        ),
    ),
}


def register_turn_presets() -> None:
    """Add :data:`TURN_PRESETS` to the preset table (a clash with another entry is an error)."""
    for name, preset in TURN_PRESETS.items():
        if name in PRESETS and PRESETS[name] is not preset:
            raise ValueError(f"preset {name!r} is already defined; turn presets cannot replace it")
        PRESETS[name] = preset


register_turn_presets()
