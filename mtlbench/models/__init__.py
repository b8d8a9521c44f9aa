"""Backbone and decoders."""
