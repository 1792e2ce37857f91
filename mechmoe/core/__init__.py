"""The bottom layer of mechmoe: helpers every other layer shares.

Modules here import nothing of mechmoe above ``_types`` and ``errors`` and keep heavy
libraries out of import time. :mod:`mechmoe.core.writer` is the one safe way to write a
file or folder.
"""
