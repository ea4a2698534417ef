"""The pretrained tags shipped inside the package: load each with ``timm.create_model(..., pretrained=True)`` (offline)
and print the robustness scores its safetensors metadata carries - the numbers RESULTS.md quotes for the tags.

Writes benchmarks/results/shipped_tags.{json,md}. Seconds on CPU; no evaluation is run here (the test suite
re-evaluates every shipped tag on its test split and checks these scores).

    python benchmarks/shipped_tags.py
"""
from __future__ import annotations


import timm

import timm_lipschitz  # noqa: F401  (registers the models and their tags)
from timm_lipschitz.hub import load_robustness
from timm_lipschitz.models._pretrained import shipped

from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)
SIGMAS = ('0', '0.3', '0.5')


def main() -> None:
    rows = []
    for name in sorted(shipped()):
        model = timm.create_model(name, pretrained=True)  # fails loudly if a tag does not load
        scores = load_robustness(name)
        rows.append({'tag': name, 'params': sum(p.numel() for p in model.parameters()),
                     'dataset': scores['dataset'], 'objective': scores['objective'], 'hparams': scores['hparams'],
                     **{f'acc@{s}': scores.get(f'acc@{s}') for s in SIGMAS}, 'grid_mean': scores.get('grid_mean'),
                     'sigmas': scores['sigmas'], 'num_images': scores['num_images']})
    lines = ['| tag | params | test images | ' + ' | '.join(f'σ_test {s}' for s in SIGMAS) + ' | grid mean (grid) |',
             '|---|---|---|' + '---|' * (len(SIGMAS) + 1)]
    for r in rows:
        lo, hi, n = r['sigmas']
        lines.append(f"| `{r['tag']}` | {r['params']:,} | {r['num_images']:,} | " +
                     ' | '.join(f"{r[f'acc@{s}']:.2f}" for s in SIGMAS) +
                     f" | {r['grid_mean']:.2f} ({n} levels, {lo:g}…{hi:g}) |")
    table = '\n'.join(lines)
    write_results('shipped_tags', rows, f'# Shipped pretrained tags (scores from their metadata)\n\n{table}\n')
    print(table)


if __name__ == '__main__':
    main()
