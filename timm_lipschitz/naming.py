"""The two rules that turn free text into names, written once: :func:`compact` (a hyperparameter or loss name
without its underscores, in tags and short names) and :func:`safe_name` (free text reduced to the characters a
file name, a grid-point folder or a tag may hold). Every tag, point folder and file name the package has written
goes through them, so changing either renames finished runs: ``tests/test_structure.py`` pins their outputs.
Torch-free.
"""
from __future__ import annotations

import re

__all__ = ['compact', 'safe_name', 'FILE_CHARS', 'POINT_CHARS', 'TAG_CHARS']

FILE_CHARS = 'A-Za-z0-9._-'   # file names of evaluation outputs (runs of others become '_')
POINT_CHARS = 'A-Za-z0-9.-'   # values in grid-point folder names (others dropped; '_' separates the parts)
TAG_CHARS = 'a-z0-9'          # dataset codes in tags (lower case; '_' separates the parts, '.' is the tag's)


def compact(name: str) -> str:
    """``lipschitz_target`` -> ``lipschitztarget``: names inside tags and point names, where '_' separates parts."""
    return name.replace('_', '')


def safe_name(text: str, chars: str = FILE_CHARS, fill: str = '') -> str:
    """``text`` with every run of characters outside ``chars`` (a regex class body) replaced by ``fill``."""
    return re.sub(f'[^{chars}]+', fill, str(text))
