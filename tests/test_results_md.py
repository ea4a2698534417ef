"""benchmarks/RESULTS.md is read back against the JSON its sections cite, so a re-run that changes a number cannot
leave the prose quoting the old one (the shipped-tags table has its own test in test_hub.py)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List

import pytest
from timm_lipschitz.certificates import eval_entry
from timm_lipschitz.zoo import WEIGHTS_DIR, header_metadata, shipped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'benchmarks' / 'RESULTS.md'
FILES = ROOT / 'benchmarks' / 'results'


def section(title: str) -> str:
    """The text of the section whose heading starts with ``title``, up to the next heading of any level."""
    text = RESULTS.read_text()
    assert title in text, f'RESULTS.md has no section {title!r}'
    return re.split(r'\n#{2,3} ', text.split(title, 1)[1], maxsplit=1)[0]


def row(text: str, first_cell: str) -> List[str]:
    """The cells after the first of the table row that starts with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('|') and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f'no table row {first_cell!r}')


def first_number(cell: str) -> float:
    return float(re.match(r'\**([0-9.]+)', cell).group(1))


def study(name: str) -> Dict[str, dict]:
    return json.loads((FILES / f'{name}.json').read_text())['results']


def test_resnet_study_tables_quote_the_study_json():
    text = section('## Beyond Gaussian noise: common corruptions and attacks on the Table 3 ResNet-20s')
    models = list(study('study_fmnist_resnet20').values())
    assert len(models) == 4
    means = [first_number(c) for c in row(text, '**mean of the 18**')]
    assert means == [round(m['corruptions']['mean'], 1) for m in models]
    for corruption in ('gaussian_noise', 'glass_blur', 'snow', 'brightness'):
        assert [first_number(c) for c in row(text, corruption)] == \
            [round(m['corruptions'][corruption]['mean'], 1) for m in models], corruption
    for norm, eps, label in (('l2', '0.5', 'L2 0.5'), ('l2', '1', 'L2 1.0'), ('linf', '0.1', 'L∞ 0.1')):
        assert [first_number(c) for c in row(text, label)] == \
            [round(m['attacks'][norm][eps], 1) for m in models], label
    certified = row(text, 'certified by randomized smoothing (σ 0.25, n 1,000, α 0.001, 100 images) at L2 0.5')
    assert [first_number(c) for c in certified] == [m['attacks']['smoothing']['l2']['0.5'] for m in models]


def test_mnistnet_study_table_quotes_the_study_json():
    text = section('### The same study on the paper\'s MNIST net')
    models = list(study('study_fmnist_mnistnet').values())
    assert [first_number(c) for c in row(text, '**mean corruption accuracy**')] == \
        [round(m['corruptions']['mean'], 1) for m in models]
    pgd = [c.split(' / ') for c in row(text, 'PGD L2 0.5 / 1.0 / 2.0')]
    assert [[float(v) for v in c] for c in pgd] == \
        [[round(m['attacks']['l2'][e], 1) for e in ('0.5', '1', '2')] for m in models]


def test_k_precision_table_quotes_its_json():
    text = section('## Mixed precision: k(x) under bf16 on trained weights')
    rows = json.loads((FILES / 'k_precision_cpu.json').read_text())
    quoted = [line for line in text.splitlines() if line.startswith('| hinge') or line.startswith('| standard')]
    assert len(quoted) == len(rows)
    for line, r in zip(quoted, rows):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[1] == r['dtype'].replace(' + ', ', ')
        assert cells[2] == f"{r['k_mean_fp32']:.4f} / {r['k_mean_low']:.4f}"
        assert float(cells[3].split('%')[0]) == round(100 * r['rel_diff_median'], 2)
        assert cells[4].split()[0] == str(r['hinge_side_flips'])


def test_cli_speed_line_quotes_its_json():
    text = section('## Command-line answer time')
    rows = {r['case']: r['median_s'] for r in json.loads((FILES / 'cli_speed.json').read_text())['rows']}
    assert f"answers in {rows['--help']:.3f} s" in text
    assert f"{rows['recipe with a wrong type']:.3f} s" in text
    assert f"{rows['recipe with loss.sigma=-0.5']:.3f} s" in text


def test_lipschitz_bound_row_quotes_its_json():
    text = section('## Beyond Gaussian noise: common corruptions and attacks on the Table 3 ResNet-20s')
    bounds = {r['tag']: r for r in json.loads((FILES / 'lipschitz_bounds.json').read_text())}
    tags = [m.split('=', 1)[1] for m in re.findall(r'"[^"]*=[^"]+"|\S+=cifar_resnet20\.\S+`?',
                                                    text.split('Command:', 1)[1].split('(defaults', 1)[0])]
    tags = [t.strip('"`') for t in tags]
    assert len(tags) == 4
    quoted = row(text, 'PGD lower bound of the softmax\'s Lipschitz constant (radius 0.5, 128 images)')
    assert [float(c) for c in quoted] == [round(bounds[t]['pgd_lower_bound_probs'], 2) for t in tags]
    logits = row(text, 'same for the logits / mean sampled k(x) at σ 0.5 (0.25 for the σ 0.25 hinge), 128 images')
    assert [float(c.split(' / ')[0]) for c in logits] == \
        [float(f"{bounds[t]['pgd_lower_bound_logits']:.3g}") for t in tags]


def test_autoattack_table_quotes_its_json():
    text = section('### AutoAttack against the PGD screen')
    models = list(study('study_fmnist_resnet20_autoattack').values())
    assert [first_number(c) for c in row(text, 'clean (50 images)')[1:]] == [m['autoattack']['clean'] for m in models]
    for norm, eps, label in (('linf', '0.1', 'L∞'), ('l2', '0.5', 'L2')):
        cells = row(text, label)
        assert cells[0] == eps
        quoted = [[float(v) for v in c.split(' [')[0].split(' / ')] for c in cells[1:]]
        assert quoted == [[round(m['autoattack'][norm][eps], 1), round(m['autoattack']['pgd'][norm][eps], 1)]
                          for m in models], label


def test_adversarial_cost_table_quotes_its_json():
    text = section('The worst-direction hinge and the adversarial peers (CPU)')
    adv = json.loads((FILES / 'speed_cpu.json').read_text())['adversarial']
    for first, key in [('cross-entropy', 'cross_entropy'),
                       ('`lipschitz_hinge` (Gaussian, the paper)', 'lipschitz_hinge (gaussian)'),
                       ('`lipschitz_hinge`, `perturbation: adversarial`, 3 search steps',
                        'lipschitz_hinge (adversarial, 3 steps)'),
                       ('`pgd_adversarial`, L2 ε 0.5, 5 steps', 'pgd_adversarial (l2 0.5, 5 steps)'),
                       ('`trades`, L2 ε 0.5, 5 steps, β 6', 'trades (l2 0.5, 5 steps)')]:
        ms, ratio = row(text, first)[:2]
        assert float(ms.replace(',', '')) == round(adv['step_seconds'][key] * 1e3), first
        assert first_number(ratio) == round(adv['ratio_to_ce'][key], 2), first


def test_cohen_protocol_table_quotes_its_eval_json():
    text = section("Randomized smoothing under Cohen et al.'s protocol (Fashion-MNIST, CPU)")
    models = json.loads((FILES / 'cohen_fmnist' / 'eval.json').read_text())['models']
    for first, tag in [('hinge σ 0.5, L_n 0.01, β 1 (`cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist`)',
                        'cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist'),
                       ('Gaussian augmentation σ 0.5 (`cifar_resnet20.gaussian_augmentation_s050_fmnist`)',
                        'cifar_resnet20.gaussian_augmentation_s050_fmnist')]:
        smooth = models[tag]['smoothing']
        accuracy, acr, seconds = row(text, first)[:3]
        assert accuracy.split(' / ') == ['–' if a is None else f'{a:.0f}' for a in smooth['certified_accuracy']]
        assert float(acr) == round(smooth['average_certified_radius'], 3)
        assert float(seconds) == round(sum(r['time'] for r in smooth['rows']) / len(smooth['rows']), 2)
        assert smooth['preset'] == 'cohen' and smooth['n'] == 10000 and smooth['num_images'] == 100


def test_rerunning_a_benchmark_leaves_the_tracked_results_alone(tmp_path):
    """A documented command re-run writes benchmarks/out/; only UPDATE_RESULTS=1 writes benchmarks/results/."""
    import subprocess
    import sys
    bench = Path(__file__).resolve().parent.parent / 'benchmarks'
    code = ("import sys; sys.path.insert(0, {b!r}); import _results; "
            "print(_results.OUT); _results.write_results('zz_probe', {{'a': 1}}, '# a\\n')").format(b=str(bench))
    try:
        for env, folder in (({}, 'out'), ({'UPDATE_RESULTS': '1'}, 'results')):
            r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                               env={**{k: v for k, v in os.environ.items() if k != 'UPDATE_RESULTS'}, **env})
            assert r.returncode == 0, r.stderr
            assert Path(r.stdout.splitlines()[0]) == bench / folder
            assert json.loads((bench / folder / 'zz_probe.json').read_text()) == {'a': 1}
            other = bench / ('results' if folder == 'out' else 'out') / 'zz_probe.json'
            assert not other.exists() or folder == 'results'
    finally:
        for folder in ('out', 'results'):
            for suffix in ('json', 'md'):
                (bench / folder / f'zz_probe.{suffix}').unlink(missing_ok=True)


def _study_module(name: str = 'robustness_study'):
    import importlib
    import sys
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    return importlib.import_module(name)


def test_worst_direction_study_tables_are_rendered_from_the_study_json():
    """The summary tables of the worst-direction study are exactly what robustness_study renders from its JSON."""
    rs = _study_module()
    text = section('## The hinge in the worst direction against Gaussian augmentation and TRADES')
    for name in ('study_fmnist_resnet20_adversarial', 'study_fmnist_mnistnet_adversarial'):
        for line in rs.summary_table(study(name)):
            assert line in text, (name, line)


def test_certified_study_tables_are_rendered_from_the_study_json():
    """The deterministic-certificate study: its summary table is what robustness_study renders from its JSON."""
    rs = _study_module()
    text = section('## Deterministic certificates of 1-Lipschitz networks against smoothing and attacks')
    for line in rs.summary_table(study('study_fmnist_certified')):
        assert line in text, line


def test_certified_study_table_is_rendered_from_its_json():
    """Every row of the certified study's table is what certified_study.py renders from its JSON, the plot beside
    it, and each headline number the section quotes is that of its row."""
    cs = _study_module('certified_study')
    text = section('## A deterministic certificate that beats smoothing?')
    data = json.loads((FILES / 'study_fmnist_certified_recipes.json').read_text())
    for line in cs.markdown(data['rows'], data['header']).splitlines()[2:]:
        assert line in text, line
    assert (FILES / 'study_fmnist_certified_recipes.png').is_file()
    tag = shipped()['lip_mlp.lipschitz_margin_e1_tau8_fmnist']  # the same-images comparison is the tag's own record
    smooth = json.loads(header_metadata(WEIGHTS_DIR / tag['file'])['robustness'])['smoothing']
    for label, values in (('deterministic certificate', smooth['deterministic_same_images']),
                          ('randomized smoothing', smooth['certified'])):
        assert row(text, label) == ['–' if v is None else f'{v:.2f}' for v in values.values()]
    best = data['rows']['lip_mlp ε1, 10 ep (the shipped tag)']
    assert f"{best['certified']['0.5']:.2f}% certified at l2 0.5" in text
    assert f"{best['clean']:.2f}% clean" in text


def test_autoattack_on_the_shipped_mlp_is_quoted_from_its_eval_json():
    """The soundness paragraph's AutoAttack figures are those of the run's eval.json, with no certified image broken."""
    text = section('## A deterministic certificate that beats smoothing?')
    entry, = json.loads((FILES / 'autoattack_cpu' / 'aa40_lipmlp_tag' / 'eval.json').read_text())['models'].values()
    attacks, checked = entry['attacks'], entry['soundness']['certified_vs_attack']
    assert checked['violations'] == 0 and 'AutoAttack' in checked['attack']
    assert f"left {attacks['l2']['0.5']:.1f}% standing" in text
    assert f"certified {checked['checked']['0.5']['certified']} of them" in text
    assert f"on the first {attacks['num_images']} images" in text
    assert 'APGD-CE broke {APGD-CE} images, APGD-DLR {APGD-DLR}'.format(**attacks['broken_by']['l2']['0.5']) in text


def test_lipschitz_library_and_speed_rows_quote_their_json():
    text = section('### Which Lipschitz-layer library')
    libs = json.loads((FILES / 'lipschitz_libraries.json').read_text())['rows']
    for name, r in libs.items():
        cells = row(text, name)
        assert float(cells[0]) == round(r['train_step_ms'], 1) and float(cells[1]) == round(r['eval_forward_ms'], 1)
        assert float(cells[2]) == round(r['plain_forward_ms'], 1)
        assert float(cells[3]) == round(r['max_jacobian_norm'], 4)
    lip = json.loads((FILES / 'speed_cpu.json').read_text())['lipschitz_net']
    cells = row(text, 'lip_convnet eval forward (plain export) / plain twin\'s')
    assert first_number(cells[0]) == round(lip['eval_ratio'], 2)
    cells = row(text, 'lip_convnet training step / plain twin\'s')
    assert first_number(cells[0]) == round(lip['train_ratio'], 2)


def _aa_entry(robust: float, broken: Dict[str, int]) -> dict:
    return {'method': 'AutoAttack (ART)', 'pgd_method': 'PGD (ART)', 'num_images': 50, 'clean': 90.0, 'warnings': [],
            'broken_by': {'l2': {'0.5': broken}}, 'pgd': {'l2': {'0.5': robust + 2}}, 'l2': {'0.5': robust}}


def test_study_parts_run_side_by_side_merge_into_one_table(tmp_path, monkeypatch):
    """--merge: the rows of parts in the order given, each member's breaks shown; a repeated row is refused."""
    rs = _study_module()
    import _results
    monkeypatch.setattr(_results, 'OUT', tmp_path / 'out')
    monkeypatch.setattr(_results, 'TRACKED', tmp_path / 'results')
    members = {'APGD-CE': 30, 'APGD-DLR': 1, 'DeepFool': 0, 'Square': 2}
    rs.save('part_b', 'second run', {'b': {'autoattack': _aa_entry(40.0, members)}})
    rs.save('part_a', 'first run', {'a': {'autoattack': _aa_entry(8.0, {**members, 'Square': 0})}})
    rs.merge('merged', ['part_a', 'part_b'])
    saved = json.loads((tmp_path / 'out' / 'merged.json').read_text())
    assert list(saved['results']) == ['a', 'b'] and 'part_a: first run' in saved['header']
    md = (tmp_path / 'out' / 'merged.md').read_text()
    assert '| l2 | 0.5 | 8.0 / 10.0 [' in md and '| b | l2 | 0.5 | 30 | 1 | 0 | 2 |' in md
    assert '| model | norm | ε | APGD-CE | APGD-DLR | DeepFool | Square |' in md
    with pytest.raises(SystemExit, match=r"part_a gives \['autoattack'\] of the row 'a' again"):
        rs.merge('merged', ['part_a', 'part_a'])
    rs.save('study', 'the study', {'a': {'train_time_s': 5.0}, 'renamed': {'train_time_s': 7.0}})
    rs.merge('study', ['study', 'part_a', 'renamed=part_b'])  # a study gains its AutoAttack column in place
    rows = json.loads((tmp_path / 'out' / 'study.json').read_text())['results']
    assert rows['a']['train_time_s'] == 5.0 and rows['a']['autoattack']['l2']['0.5'] == 8.0
    assert rows['renamed']['autoattack']['l2']['0.5'] == 40.0 and 'b' not in rows
    with pytest.raises(SystemExit, match='merged holds 2 rows; a label renames a one-row part'):
        rs.merge('study', ['x=merged'])


AUTOATTACK_PARTS = FILES / 'autoattack_cpu'


def _aa_per_image(part: str) -> str:
    """The l2 0.5 AutoAttack outcome per image (1 = kept its label) of one part run, in evaluation order."""
    models = json.loads((AUTOATTACK_PARTS / part / 'autoattack' / 'autoattack' / 'eval.json').read_text())['models']
    (entry,) = models.values()
    assert entry['attacks']['subset']['rule'].startswith('stratified prefix')
    return entry['attacks']['per_image']['l2']['0.5']


def test_autoattack_broke_no_image_the_deterministic_certificate_holds_at_its_radius():
    """Soundness, with the strongest attack run: every image the 1-Lipschitz nets certify at l2 0.5 (the study's
    per-image radii) kept its label under AutoAttack at l2 0.5 (the same images: subsets are prefixes of one order)."""
    certified = json.loads((FILES / 'study_fmnist_certified' / 'eval.json').read_text())['models']
    checked, counts = 0, []
    for label, part in (('1-Lipschitz net, margin ε0.5', 'aa30_lip_e05'),
                        ('1-Lipschitz net, margin ε0.75', 'aa30_lip_e075'), ('1-Lipschitz net, hinge', 'aa30_lip_hinge')):
        kept = _aa_per_image(part)
        radius = eval_entry(certified[label])['radius'][:len(kept)]
        sure = [i for i, r in enumerate(radius) if r >= 0.5]
        assert sure and all(kept[i] == '1' for i in sure), (label, sure, kept)
        checked += len(sure)
        counts.append(len(sure))
        a = _aa_part(part)
        assert a['pgd']['l2']['0.5'] - a['l2']['0.5'] <= 2.0  # "at most 1 image more than PGD"
    assert checked >= 30
    text = ' '.join(section('## Deterministic certificates of 1-Lipschitz networks').split())
    assert f'certify {counts[0]}, {counts[1]} and {counts[2]} images at l2 0.5' in text
    assert f'broke none of these {checked} images' in text


def test_autoattack_rows_of_the_studies_are_rendered_from_their_json():
    """The AutoAttack columns and the per-member table of the three studies are what robustness_study renders."""
    rs = _study_module()
    for title, name in (('### AutoAttack on the worst-direction study', 'study_fmnist_resnet20_adversarial'),
                        ('### AutoAttack on the worst-direction study', 'study_fmnist_mnistnet_adversarial'),
                        ('## Deterministic certificates of 1-Lipschitz networks against smoothing and attacks',
                         'study_fmnist_certified')):
        results = study(name)
        assert all('autoattack' in r for r in results.values()), name
        text = section(title)
        lines = rs.autoattack_table(results)
        table = lines[2:lines.index('', 2)] if '' in lines[2:] else lines[2:]  # AutoAttack / PGD per norm and ε
        assert len(table) >= 3
        for line in table:
            assert line in text, (name, line)


def _aa_part(name: str) -> dict:
    (entry,) = json.loads((AUTOATTACK_PARTS / f'{name}.json').read_text())['results'].values()
    return entry['autoattack']


def test_autoattack_section_claims_hold_in_the_json():
    """What the AutoAttack subsection says of all its runs: the largest PGD-to-AutoAttack gap per norm, Square never
    breaking an image, and the same result with one Square restart as with ART's five (same images)."""
    text = section('### AutoAttack on the worst-direction study')
    rows = [r['autoattack'] for name in ('study_fmnist_resnet20_adversarial', 'study_fmnist_mnistnet_adversarial')
            for r in study(name).values()]
    gap = {norm: max(round(a['pgd'][norm][e] - a[norm][e], 6) for a in rows for e in a[norm]) for norm in ('l2', 'linf')}
    assert gap == {'l2': 4.0, 'linf': 6.0}
    assert 'at most 2 of those images more\n  than PGD does under L2 0.5 (4 points' in section('## The hinge in the worst')
    parts = sorted(AUTOATTACK_PARTS.glob('*.json'))
    square = [counts['Square'] for part in parts for by_eps in _aa_part(part.stem)['broken_by'].values()
              for counts in by_eps.values()]
    assert len(square) >= 20 and sum(square) == 0 and 'Square broke no image in any run' in text
    for five, one, value in (('aacheck5_mn_hinge', 'aa31_mn_hinge', 66.0), ('aacheck5_hinge_tag', 'aacheck_hinge_tag', 6.0)):
        a5, a1 = _aa_part(five), _aa_part(one)
        assert '× 5 restart(s)' in a5['method'] and '× 1 restart(s)' in a1['method']
        assert a5['l2']['0.5'] == a1['l2']['0.5'] == value and f'{value:.1f}%' in text


def test_first_use_certify_command_time_quotes_its_json():
    r = json.loads((FILES / 'certify_command_cpu.json').read_text())
    assert r['exit_code'] == 0 and r['printed_expected'] and r['met'] and r['target_s'] == 300
    assert r['command'].startswith('timm-lipschitz eval --model lip_convnet.lipschitz_margin_e075_tau8_fmnist '
                                   '--pretrained --certify --max-images 200')
    assert f"**{r['median_s']:.1f} s**" in section('## Deterministic certificates of 1-Lipschitz networks')
