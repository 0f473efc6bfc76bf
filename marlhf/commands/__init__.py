"""The ``marlhf`` commands: train, compare, eval, sft, rm, audit."""
