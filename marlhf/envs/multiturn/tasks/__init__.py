"""Offline multi-turn tasks (see ``docs/multiturn_tasks.md``)."""
