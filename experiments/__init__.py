"""Experiment configs: `get_config(arg)` per model x dataset; `base` holds the defaults."""
