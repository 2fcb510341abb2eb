"""Suggested ROME hyperparameters (`rome_nb.suggest`) on the packaged toy, kept fast: one or two layers, a few
edits, no search (`QUICK_GRID`) or a one-field search. The JSON round-trips through `ROMEHyperParams.from_json`,
the validation split shares no case or subject with the reported edits, the free-vector ceiling is at least what
a (deliberately weak) ROME edit reaches on the same cases, and the `--suggest` flag of `rome_nb_layer_sweep`
exits 0 on success and 2 with one line on bad input."""
import json, os, subprocess, sys, warnings
from dataclasses import replace
from pathlib import Path
import pytest

torch = pytest.importorskip('torch')
from rome_nb.editing import hparams_path
from rome_nb.rome import ROMEHyperParams
from rome_nb.toyworld import load_toy, toy_counterfact
from rome_nb.layer_sweep import edit_scores
from rome_nb.suggest import (QUICK_GRID, SuggestGrid, known_records, split_records, suggest_hparams,
                             reported_records, free_vector, free_vector_ceiling, coordinate_search,
                             trial_key, ns_floor, unedited_ns)
from rome_nb.edit_core import fill

BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "The packaged toy, its records, and its hyperparameters with statistics in a temporary folder."
    torch.set_num_threads(1)
    mt, world = load_toy()
    sd = tmp_path_factory.mktemp('stats')
    return mt, toy_counterfact(world), replace(ROMEHyperParams.from_json(hparams_path('ROME', 'toy')),
                                               stats_dir=str(sd)), sd


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*ill-conditioned')
        yield


@pytest.fixture(scope='module')
def suggested(toy):
    mt, records, hp, sd = toy
    out = sd / 'suggested.json'
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*ill-conditioned')
        sug = suggest_hparams(mt, records[:20], base=hp, n_val=2, layers=[0, 1], grid=QUICK_GRID, out=out)
    return sug, out


def test_json_round_trip(suggested):
    sug, out = suggested
    back = ROMEHyperParams.from_json(out)
    assert back == sug  # every setting
    src = json.loads(out.read_text())['source']
    assert back.source == src and src['layer'] == back.layers[0]
    for k in ('sweep', 'layer_rule', 'validation_case_ids', 'trials', 'validation', 'ceiling_validation_ES',
              'unedited_validation_NS', 'ns_min'):
        assert k in src, k
    assert src['ns_min'] == ns_floor(src['unedited_validation_NS'])
    assert [r['layer'] for r in src['sweep']] == [0, 1]


def test_validation_split_is_disjoint(toy, suggested):
    mt, records, _, _ = toy
    sug, _ = suggested
    rep = reported_records(mt, records[:20], sug, 5)
    val_ids = set(sug.source['validation_case_ids'])
    assert len(rep) == 5 and not val_ids & {r['case_id'] for r in rep}
    subj = lambda rs: {r['requested_rewrite']['subject'] for r in rs}
    val = [r for r in records if r['case_id'] in val_ids]
    assert not subj(val) & subj(rep)
    v, rest = split_records(records[:10], 3)
    assert not {r['case_id'] for r in v} & {r['case_id'] for r in rest}
    with pytest.raises(ValueError, match='n_val'): split_records(records[:2], 2)


def test_ceiling_at_least_the_edit(toy):
    "A constructed case: ROME with 2 tiny steps barely moves; the free vector at the same layer does better."
    mt, records, hp, _ = toy
    cases = known_records(mt, records[:10], n=3)
    weak = edit_scores(mt, cases, replace(hp, v_num_grad_steps=2, v_lr=0.01), 0)['ES']
    ceiling = free_vector_ceiling(mt, cases, 0, hp)
    assert ceiling >= weak and ceiling == 100.0
    for r in cases:  # per case: the free vector wins where the weak edit does
        assert free_vector(mt, r, 0, hp)[1]


def test_ns_floor_and_ranking():
    assert ns_floor(100) == 95 and ns_floor(94.5) == 91.5 and ns_floor(50, cap=40) == 40
    strong = dict(ES=100, PS=100, NS=85, ES_diff=90)
    gentle = dict(ES=0, PS=0, NS=90, ES_diff=-90)
    assert trial_key(gentle, 95) > trial_key(strong, 95)  # both under the floor: more NS wins
    assert trial_key(strong, 85) > trial_key(gentle, 85)  # both at or over it: ES wins


def test_unedited_ns_counts_neighbours(toy):
    "Records built so the answer is known: a known fact's own prompt as its neighbour, then with the objects swapped."
    mt, records, _, _ = toy
    recs = known_records(mt, records[:10], n=2)
    own = [dict(r, neighborhood_prompts=[fill(r['requested_rewrite']['prompt'], r['requested_rewrite']['subject'])])
           for r in recs]
    rw = lambda r: r['requested_rewrite']
    swapped = [dict(r, requested_rewrite=dict(rw(r), target_new=rw(r)['target_true'], target_true=rw(r)['target_new']))
               for r in own]
    assert unedited_ns(mt, own) == 100.0
    assert unedited_ns(mt, swapped) == 0.0
    assert unedited_ns(mt, own[:1] + swapped[1:]) == 50.0


def test_search_keeps_the_better_value(toy):
    mt, records, hp, _ = toy
    cases = known_records(mt, records[:10], n=2)
    best, trials = coordinate_search(mt, cases, replace(hp, v_lr=0.001),
                                     SuggestGrid((), (hp.v_num_grad_steps,), (0.001, 2.0), (), ()))
    assert [t['field'] for t in trials] == ['start', 'v_lr']  # the current value is not tried again
    assert trials[0]['ES'] < trials[1]['ES'] and trials[1]['kept'] and best.v_lr == 2.0


def exe():
    f = BIN / 'rome_nb_layer_sweep'
    if not f.exists(): pytest.skip(f'{f.name} is not installed beside {sys.executable}')
    return str(f)


def run(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    env.pop('ROME_NB_DEBUG', None)
    return subprocess.run([exe(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_cli_suggest(toy, tmp_path):
    _, _, hp, _ = toy
    hp.to_json(tmp_path / 'hp.json')
    out = tmp_path / 'sug.json'
    r = run('--suggest', out, '--n_val', 1, '--layers', '0', '--quick', '--hparams_fname', tmp_path / 'hp.json',
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'written to' in r.stdout
    sug = ROMEHyperParams.from_json(out)
    assert sug.layers == [0] and len(sug.source['validation_case_ids']) == 1


@pytest.mark.parametrize('args, want', [
    (['--suggest', 'nodir/x.json'], 'existing folder'),
    (['--suggest', 'x.txt'], '.json file'),
    (['--suggest', 'x.json', '--n_val', '0'], 'n_val must be at least 1'),
    (['--suggest', 'x.json', '--layers', '9'], 'not in this model'),
])
def test_cli_suggest_bad_input(tmp_path, args, want):
    r = run(*args, cwd=tmp_path)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and 'Traceback' not in r.stderr and want in err[0], err
    assert not (tmp_path / 'x.json').exists()
