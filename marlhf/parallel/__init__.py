"""Data parallelism: torch.distributed collectives and FSDP sharding of the policy."""
