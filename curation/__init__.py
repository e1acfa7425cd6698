"""Curation: MetaCLIP-style keyword matching and balancing of image-text pools on Spark."""

__version__ = "0.1.0"
