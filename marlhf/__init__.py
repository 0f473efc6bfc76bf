"""marlhf: RLHF with macro actions (MA-RLHF, arXiv 2410.02743).

Importing marlhf registers every environment under the ``marlhf/`` namespace.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys
from typing import TYPE_CHECKING, Any

# OpenMP threads that sleep while they wait instead of spinning: on a machine whose cores other
# processes use, spinning threads slowed training many times over (docs/threads.md). OpenMP
# reads the variable once, when torch loads: it takes effect only if torch was not imported
# before us.
# MARLHF_NUM_THREADS=torch leaves torch's threading as it is, this included.
_TORCH_PRELOADED = "torch" in _sys.modules
_WAIT_POLICY_GIVEN = _os.environ.get("OMP_WAIT_POLICY")  # set before us (shell, parent process)
if _os.environ.get("MARLHF_NUM_THREADS", "").strip() != "torch":
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from marlhf import _compat  # noqa: E402

_compat.install()  # old import paths (marlhf.agents.*, marlhf.training.*) for one release

from marlhf.envs.core.registration import register_envs as _register_envs  # noqa: E402

_register_envs()

# SB3's convention: `from marlhf import PPO, MAPPO`, imported on first use (so that `marlhf
# --help` does not load the training stack).
if TYPE_CHECKING:
    from marlhf.algorithms import MAPPO, PPO


def __getattr__(name: str) -> Any:
    if name in ("PPO", "MAPPO"):
        import marlhf.algorithms

        return getattr(marlhf.algorithms, name)
    raise AttributeError(f"module 'marlhf' has no attribute {name!r}")


__all__ = ["MAPPO", "PPO", "__version__"]
