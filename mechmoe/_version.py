"""The package version, in one place (the bottom layer can read it without importing the package root)."""

__version__ = "0.1.0"
