"""Offline multi-turn tasks (see ``docs/multiturn_tasks.md``), registered by name.

================  ============================================  ======================
task name         what it asks                                   module
================  ============================================  ======================
GuessTheNumber    find a number with higher/lower feedback       :mod:`.guess_number`
GemHanoi          GEM's Tower of Hanoi                           :mod:`.gem_games`
GemMastermind     GEM's Mastermind                               :mod:`.gem_games`
GemSokoban        GEM's Sokoban (easy)                           :mod:`.gem_games`
ReasoningRetry    reasoning-gym, retries after a wrong answer    :mod:`.reasoning_retry`
CodeFeedback      HumanEval, one retry after the sandbox error   :mod:`.code_feedback`
================  ============================================  ======================

Each is registered lazily (nothing heavy is imported until a task is built) as
``marlhf/<name>-v0``, a multi-turn env id (``make_vec`` gives the batched multi-turn env).
"""

from marlhf.envs.core.registration import register_task

_HERE = "marlhf.envs.multiturn.tasks"
#: task name -> entry point of its MultiTurnTask class.
TASKS = {
    "GuessTheNumber": f"{_HERE}.guess_number:GuessTheNumberTask",
    "GemHanoi": f"{_HERE}.gem_games:GemHanoiTask",
    "GemMastermind": f"{_HERE}.gem_games:GemMastermindTask",
    "GemSokoban": f"{_HERE}.gem_games:GemSokobanTask",
    "ReasoningRetry": f"{_HERE}.reasoning_retry:ReasoningRetryTask",
    "CodeFeedback": f"{_HERE}.code_feedback:CodeFeedbackTask",
}

for _name, _entry in TASKS.items():
    register_task(_name, _entry, multiturn=True)
