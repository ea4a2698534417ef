"""The one output rule: a command writes into a folder that is empty, or that holds only what timm-lipschitz commands
wrote, and never replaces a file a user wrote. Every command that writes goes through it: ``train`` (its run
folder, with the run rules of :mod:`.runs` on top), ``eval --out``, ``sweep`` and ``--collect``, ``--slurm FILE``,
``publish --out-dir``, ``export --out`` and ``convert``. Torch-free.

What counts as written by the package:

- the files a folder's manifest (:data:`MANIFEST_NAME`) names: every command records what it wrote there;
- in a folder written before the manifest existed, the files its command writes, when the folder holds that
  command's record: ``eval.json`` with its recorded environment (an evaluation), ``results.json`` with the sweep's
  invocation (a sweep's tables), ``model.safetensors`` with this package's metadata (a checkpoint folder: its card,
  config and records), ``final.json`` or ``recipe.yaml`` of a run (a run folder), ``<Name>.json`` beside an export;
- sub-folders that are run folders (a sweep's points) or that a command made (``slurm/``, ``publish/``).

Otherwise the command refuses in one line that names the files it would replace (or, for ``publish --out-dir``,
whose whole folder is uploaded, every file it did not write). A single-file output (``--slurm FILE``) never replaces
a file that is not a script this package wrote.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ._lazy import lazy_module
from .errors import UserError
from .fileio import atomic_write_json, read_json

runs = lazy_module('timm_lipschitz.runs', __name__)  # the run folder's names (runs.py checks folders with this rule)

__all__ = ['OutputError', 'check_output_folder', 'record_outputs', 'check_output_file', 'written', 'PRODUCTS',
           'MANIFEST_NAME', 'CONFIG_NAME']

MANIFEST_NAME = '.timm-lipschitz.json'
CONFIG_NAME = 'config.json'  # timm's export config of a checkpoint folder (read by hub.files.read_config only)
# what each command writes into its folder (file names or patterns)
PRODUCTS: Dict[str, Sequence[str]] = {
    'eval': ('eval.json', 'eval.md', 'eval.png', 'certified.png', 'demo.png', 'corruption_families.png',
             'corruptions_*.png', 'attacks_*.png', 'certify_*.tsv'),
    'sweep': ('tables.md', 'results.json', '*.png', 'slurm'),
    'checkpoint': ('model.safetensors', CONFIG_NAME, 'README.md', 'robustness.json', 'robustness.md',
                   'robustness.png', 'recipe.yaml', '*.png'),
    'export': ('model.safetensors', '*.json'),
}


class OutputError(UserError, RuntimeError):
    """A command would write where a user's files are; the message names them and the way out."""


def _manifest(folder: Path) -> Dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        data = read_json(path) if path.is_file() else {}
    except Exception:  # noqa: BLE001 - an unreadable manifest proves nothing: fall back to the records
        data = {}
    return data if isinstance(data, dict) and isinstance(data.get('files'), dict) else {'files': {}}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ours_by_record(folder: Path) -> List[str]:
    """Patterns of the files a folder written before the manifest holds, proven by its command's record."""
    patterns: List[str] = []
    ev = _json(folder / 'eval.json')
    env = ev.get('environment') if isinstance(ev, dict) else None
    recorded = isinstance(env, dict) and 'timm_lipschitz' in env
    if recorded or isinstance(ev, dict) and ev and all(isinstance(v, dict) and 'sweep' in v for v in ev.values()):
        patterns += PRODUCTS['eval']
    res = _json(folder / 'results.json')
    if isinstance(res, dict) and 'grid' in res and 'rows' in res:
        patterns += PRODUCTS['sweep']
    if _package_weights(folder / 'model.safetensors'):
        patterns += PRODUCTS['checkpoint'] + PRODUCTS['export']
    if _is_run_folder(folder):
        patterns += [*runs.RUN_FILES, 'recipe.segment-*.yaml', 'tensorboard', 'robustness.*', 'publish',
                     *PRODUCTS['checkpoint'], *PRODUCTS['eval']]
    return patterns


def _package_weights(path: Path) -> bool:
    """A safetensors file whose header carries this package's metadata (or an export's entry)."""
    if not path.is_file():
        return False
    try:
        with path.open('rb') as f:
            size = int.from_bytes(f.read(8), 'little')
            header = json.loads(f.read(min(size, 10 ** 7)))
    except (OSError, ValueError):
        return False
    meta = (header.get('__metadata__') if isinstance(header, dict) else None) or {}
    return 'format_version' in meta or 'entry' in meta or 'robustness' in meta


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in runs.RUN_RECORDS)


def _foreign(folder: Path, ignore: Iterable[str] = ()) -> List[str]:
    """The entries of ``folder`` no timm-lipschitz command wrote (module doc)."""
    listed = set(_manifest(folder)['files'])
    patterns = _ours_by_record(folder)
    out = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name == MANIFEST_NAME or name in listed or name in ignore or any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        if _is_run_folder(entry) or '.stale-' in name and entry.is_dir():
            continue
        out.append(name)
    return out


def check_output_folder(folder: Any, flag: str, writes: Iterable[str] = (), exclusive: bool = False,
                        ignore: Iterable[str] = ()) -> Path:
    """Refuse an output folder that holds files a user wrote. ``writes``: the files the command is about to write
    (named first in the refusal when one would be replaced); ``ignore``: entries the caller itself made (a claim);
    ``exclusive``: every foreign file is refused even if nothing would replace it (``publish --out-dir``: the whole
    folder is uploaded)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f'{flag} {folder} is a file; give a folder.')
    if not folder.is_dir():
        return folder
    foreign = _foreign(folder, tuple(ignore))
    if not foreign:
        return folder
    writes = list(writes)
    replaced = [n for n in foreign if any(fnmatch.fnmatch(n, w) for w in writes)]
    shown = ', '.join((replaced or foreign)[:6]) + (f', ... ({len(foreign)} entries)' if len(foreign) > 6 else '')
    what = (f'would replace {shown}, which timm-lipschitz did not write' if replaced else
            f'holds {shown}, which timm-lipschitz did not write' +
            (' and which would be uploaded with it' if exclusive else ''))
    raise OutputError(f'{flag} {folder} {what}. Give a new or empty folder, or one a timm-lipschitz command wrote.')


def record_outputs(folder: Any, names: Iterable[str], command: str) -> None:
    """Add the files a command wrote to the folder's manifest, with the command that wrote them."""
    folder = Path(folder)
    manifest = _manifest(folder)
    for name in names:
        manifest['files'][str(name)] = command
    atomic_write_json(folder / MANIFEST_NAME, manifest)


def check_output_file(path: Any, flag: str, marker: str) -> Path:
    """A single-file output: a new file, or one this package wrote (its first lines hold ``marker``)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f'{flag} {path} is a folder; give the file to write.')
    if path.exists():
        try:
            head = path.read_text(errors='replace')[:4096]
        except OSError:
            head = ''
        if not any(line.startswith(marker) for line in head.split('\n')[:3]):
            raise OutputError(f'{flag} {path} exists and is not a script timm-lipschitz wrote; it would be replaced. '
                              f'Give a new file name.')
    return path


def written(folder: Optional[Any]) -> Dict[str, str]:
    """The manifest's files and the commands that wrote them (empty for a folder without one)."""
    return dict(_manifest(Path(folder))['files']) if folder is not None else {}
