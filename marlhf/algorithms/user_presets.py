"""``register_preset``: a user's preset beside the built-in ones (:mod:`.presets`), checked
against the config's fields."""

from __future__ import annotations

from marlhf.algorithms.config import FLAT_KEYS
from marlhf.algorithms.presets import PRESETS, Preset, available_presets

#: Names a preset cannot take: ``mappo`` names the bare macro-action agent in ``marlhf compare``'s
#: ``agents`` (beside the presets), and ``@`` separates a preset from its termination there.
RESERVED_NAMES = ("mappo",)


def register_preset(name: str, preset: Preset) -> Preset:
    """Add ``preset`` to :data:`PRESETS` under ``name``, beside the built-in ones: then
    ``PPO(..., preset=name)``, ``agent.preset: [toy, name]`` in a config and ``marlhf compare
    --set 'agents=[name]'`` use it (in ``compare``'s worker processes too when the module that
    registers it is given with ``--import``).

    :param name: the preset's name: no spaces, no ``@``, not ``mappo``.
    :param preset: what it fixes and suggests (keys are :class:`~marlhf.algorithms.config.PPOConfig`
        fields), its source and what differs from it.
    :returns: ``preset`` (registering the same object again, e.g. a module imported twice, is a
        no-op).
    :raises ValueError: a bad or taken name, a key that is no config field, or a key both fixed
        and suggested with different values (each message names the valid choices).
    """
    if not isinstance(name, str) or not name or any(c.isspace() or c == "@" for c in name):
        raise ValueError(
            f"register_preset: name {name!r} must be a non-empty string without spaces or '@' "
            "(compare's agents read PRESET@TERMINATION)"
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"register_preset: {name!r} is reserved ({RESERVED_NAMES})")
    if not isinstance(preset, Preset):
        raise ValueError(
            f"register_preset({name!r}): expected a Preset(fixed=..., suggested=...), "
            f"got {type(preset).__name__}"
        )
    if name in PRESETS:
        if PRESETS[name] is preset:
            return preset
        raise ValueError(
            f"register_preset: {name!r} is already a preset; registered: {available_presets()}"
        )
    fields = set(FLAT_KEYS)
    for part in ("fixed", "suggested", "source_settings"):
        unknown = sorted(set(getattr(preset, part)) - fields)
        if unknown:
            raise ValueError(
                f"register_preset({name!r}): {part} key {unknown[0]!r} is not a config field; "
                f"valid: {sorted(fields)}"
            )
    both = sorted(k for k in set(preset.fixed) & set(preset.suggested))
    differ = [k for k in both if preset.fixed[k] != preset.suggested[k]]
    if differ:
        raise ValueError(
            f"register_preset({name!r}): {differ[0]!r} is both fixed "
            f"({preset.fixed[differ[0]]!r}) and suggested ({preset.suggested[differ[0]]!r})"
        )
    PRESETS[name] = preset
    return preset
