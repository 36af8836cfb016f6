"""The package version, in its own module so that setuptools reads it without importing fastconv."""

__version__ = "0.1.0"
