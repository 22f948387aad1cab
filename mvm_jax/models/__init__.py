"""Flax linen models: pure modules, parameters in, arrays out."""
