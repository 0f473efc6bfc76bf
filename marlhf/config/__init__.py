"""The command line's config machinery: typed dataclass configs, YAML, dotted overrides, help."""
