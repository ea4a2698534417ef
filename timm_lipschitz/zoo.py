"""The shipped tags, without loading torch: ``weights/index.json`` (which tag lives in which safetensors file, and
the cfg fields that differ from the architecture's default) and each file's own metadata, read from the safetensors
header (its first 8 bytes give the length of a JSON header holding ``__metadata__``). It imports nothing of the
package, so the models (``models/_pretrained``, which register the tags with timm) and ``timm-lipschitz hub list``
(:mod:`.listing`) both read it."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict

__all__ = ['WEIGHTS_DIR', 'INDEX', 'shipped', 'header_metadata']

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'
INDEX = WEIGHTS_DIR / 'index.json'


def shipped() -> Dict[str, Dict[str, Any]]:
    """name -> {'file': <file name under WEIGHTS_DIR>, 'cfg': {...}} for the weights that ship in the package."""
    return json.loads(INDEX.read_text()) if INDEX.is_file() else {}


def header_metadata(path: Path) -> Dict[str, str]:
    """A safetensors file's string metadata, read from its header alone (no tensor is read, torch is not loaded)."""
    with open(path, 'rb') as f:
        (length,) = struct.unpack('<Q', f.read(8))
        return json.loads(f.read(length)).get('__metadata__', {})
