"""The experiment: one typed, validated object from YAML + overrides, and what is built from it."""
