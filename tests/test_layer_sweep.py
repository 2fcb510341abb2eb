"The layer sweep: the traced MLP effect and ROME's scores per layer, its verdict, its plot and its command."
import json, subprocess, sys, warnings
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from rome_nb.toyworld import load_toy, toy_counterfact
from rome_nb.editing import hparams_path
from rome_nb.rome import ROMEHyperParams
from rome_nb import layer_sweep as LS

BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def toy():
    mt, world = load_toy()
    return mt, toy_counterfact(world, n=6)


@pytest.fixture(scope='module')
def hp(tmp_path_factory):
    "The toy's ROME hyperparameters with a small statistics sample in a fresh folder."
    d = tmp_path_factory.mktemp('stats')
    return replace(ROMEHyperParams.from_json(hparams_path('ROME', 'toy')), stats_dir=str(d), mom2_n_samples=400,
                   v_num_grad_steps=10)


def quiet(): warnings.filterwarnings('ignore', message='.*ill-conditioned')


def test_check_layers():
    assert LS.check_layers(None, 4) == [0, 1, 2, 3]
    assert LS.check_layers('3,1,1', 4) == [1, 3]
    for bad in ([4], [-1], '1,x', [], '2.5'):
        with pytest.raises(ValueError, match='layer'): LS.check_layers(bad, 4)


def test_sweep_table(toy, hp):
    mt, recs = toy
    before = {k: v.clone() for k, v in mt.model.state_dict().items()}
    with warnings.catch_warnings():
        quiet()
        t = LS.layer_sweep(mt, recs, layers=[0, 4], n=2, hparams=hp, n_trace=4)
    assert list(t.index) == [0, 4] and list(t.columns) == ['AIE', 'ES', 'PS', 'NS', 'S']
    assert t.attrs == {'n_edit': 2, 'n_trace': 4}
    assert ((t[['ES', 'PS', 'NS', 'S']] >= 0) & (t[['ES', 'PS', 'NS', 'S']] <= 100)).all().all()
    ie = LS.mlp_effects(mt, recs[:4])
    assert np.allclose(t['AIE'].to_numpy(), ie[:, [0, 4]].mean(0))
    assert all(torch.equal(v, before[k]) for k, v in mt.model.state_dict().items())  # every edit undone
    assert 'layer' in LS.sweep_verdict(t)


def test_trace_repeats_and_follows_its_options(toy):
    mt, recs = toy
    a = LS.mlp_effects(mt, recs[:2], samples=3)
    torch.manual_seed(123)  # the trace's noise is seeded: the global state does not matter
    assert np.array_equal(a, LS.mlp_effects(mt, recs[:2], samples=3))
    assert not np.array_equal(a, LS.mlp_effects(mt, recs[:2], samples=3, window=3))


def test_edit_scores_use_the_layer(toy, hp):
    mt, recs = toy
    with warnings.catch_warnings():
        quiet()
        a = LS.edit_scores(mt, recs[:2], hp, 0)
        b = LS.edit_scores(mt, recs[:2], replace(hp, layers=[3]), 0)  # the layer argument wins
    assert a == b and set(a) == {'ES', 'PS', 'NS', 'S'}


def test_verdict():
    t = pd.DataFrame(dict(AIE=[0.1, 0.5], ES=[100., 50], PS=[90., 40], NS=[90., 90], S=[93., 55]),
                     index=pd.Index([2, 3], name='layer'))
    assert 'peaks at layer 3' in LS.sweep_verdict(t) and 'is not' in LS.sweep_verdict(t)
    assert 'is also' in LS.sweep_verdict(t.assign(S=[10., 55]))


def test_plot(tmp_path):
    t = pd.DataFrame(dict(AIE=[0.1, 0.5], ES=[100., 50], PS=[90., 40], NS=[90., 90], S=[93., 55]),
                     index=pd.Index([0, 1], name='layer'))
    LS.plot_layer_sweep(t, savepdf=tmp_path / 'sweep.png')
    assert (tmp_path / 'sweep.png').stat().st_size > 1000


def cli(*args, cwd, **env):
    f = BIN / 'rome_nb_layer_sweep'
    if not f.exists(): pytest.skip(f'{f.name} is not installed beside {sys.executable}')
    import os
    e = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1', PYTHONWARNINGS='ignore', **env)
    e.pop('ROME_NB_DEBUG', None)
    return subprocess.run([str(f), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=600)


def one_line_error(r, want):
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(err) == 1 and err[0].startswith('rome_nb_layer_sweep: error: ') and want in err[0], err
    assert 'Traceback' not in r.stderr


def test_cli_exits_0(tmp_path, hp):
    f = tmp_path / 'hp.json'
    hp.to_json(f)
    r = cli('--layers', '0,1', '--n', 1, '--n_trace', 2, '--hparams_fname', f, '--out', tmp_path / 't.csv',
            '--plot', tmp_path / 't.png', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'The trace peaks at layer' in r.stdout
    t = pd.read_csv(tmp_path / 't.csv', index_col='layer')
    assert list(t.index) == [0, 1] and 'AIE' in t and (tmp_path / 't.png').exists()


@pytest.mark.parametrize('args,want', [(('--layers', '0,9'), 'not in this model'),
                                       (('--layers', 'x'), 'comma-separated'),
                                       (('--n', 0), 'at least 1'),
                                       (('--hparams_fname', 'nope.json'), 'nope.json'),
                                       (('--nope', 1), 'unrecognized arguments')])
def test_cli_bad_input_exits_2_with_one_line(args, want, tmp_path):
    one_line_error(cli(*args, cwd=tmp_path), want)
