"""Encoders, adapters, the splice and the language model."""
