"""ppml: privacy-preserving model training for regulated data."""

__version__ = "0.1.0"
