"""Persistence: agent checkpoints, what they record of env and termination, saved rollouts."""
