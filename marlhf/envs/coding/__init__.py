"""Code tasks (HumanEval) and the sandbox that runs untrusted programs."""
