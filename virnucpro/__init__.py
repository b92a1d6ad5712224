"""virnucpro: viral short-sequence identification from six-frame ORFs and two language models."""

__version__ = "0.2.0dev"
