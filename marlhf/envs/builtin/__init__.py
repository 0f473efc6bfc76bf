"""The built-in single-turn task families: toy, credit, text, reasoning, reward-model tasks."""
