"""Which failures are the user's input and which are not: the command line's exit status.

- A configuration error exits with status 2 and one line naming the key, no traceback: a
  :class:`~marlhf.config.parse.ConfigError`, or one of :data:`INPUT_ERRORS` raised while a
  command checks its config and builds what the config names (task, model, agent, folder).
- Anything raised while a run is under way (inside :func:`during_run`: training, scoring,
  saving) and any other kind of exception is not the user's input: status 1 with its traceback.
  A run that could not save (:class:`~marlhf.runs.run_files.SaveError`) or comparison runs
  that failed in worker processes (:class:`~marlhf.runs.run_files.RunsFailed`, which names
  the log holding each traceback) are status 1 with their one-line message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from marlhf.config.parse import ConfigError

#: Exit status of a configuration error.
EXIT_BAD_INPUT = 2
#: Exit status of a run that failed (an exception inside it, a failed save, failed workers).
EXIT_FAILED = 1
#: The exceptions that name bad input when raised before a run starts (checks, builders).
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
)
_MARK = "_marlhf_during_run"


@contextlib.contextmanager
def during_run() -> Iterator[None]:
    """Mark every exception leaving the block as raised while a run was under way: whatever its
    type, it is not an error in the user's input (see :func:`is_config_error`). The exception
    itself passes through unchanged."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(AttributeError, TypeError):  # a type that takes no attribute
            setattr(err, _MARK, True)
        raise


def raised_during_run(err: BaseException) -> bool:
    """Whether ``err`` left a :func:`during_run` block."""
    return bool(getattr(err, _MARK, False))


def is_config_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input (exit status 2, one line): a ``ConfigError``, or one of
    :data:`INPUT_ERRORS` raised outside any run."""
    if isinstance(err, ConfigError):
        return True
    return isinstance(err, INPUT_ERRORS) and not raised_during_run(err)
