"""The env core: the token envs, their contract, the Task contract and registration."""
