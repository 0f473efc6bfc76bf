"""Run infrastructure: build what a config names, run one training run, its files and reports."""
