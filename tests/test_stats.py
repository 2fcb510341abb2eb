"Layer statistics from plain Python: values, cache, resume, corrupt files, the reference's files, the CLI."
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from rome_nb.models import tiny_model, tiny_tokenizer, layername
from rome_nb import stats as S

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Text number {i} tells of the city of Paris, the river Seine and {i % 7} bridges." for i in range(120)]


@pytest.fixture(scope='module')
def mt():
    return tiny_model('gpt2', n_layer=3, n_embd=32), tiny_tokenizer()


def direct_mom2(model, tok, lname, texts, maxlen):
    "The second moment computed the obvious way: one text at a time, full forward pass."
    tot, n = None, 0
    for t in texts:
        ids = tok.encode(t)[:maxlen]
        with torch.no_grad(), S.Trace(model, lname, retain_input=True) as tr: model(torch.tensor([ids]))
        k = tr.input[0].double()
        tot = k.T @ k if tot is None else tot + k.T @ k; n += len(ids)
    return tot / n, n


def test_values_match_direct_computation(mt, tmp_path):
    model, tok = mt
    lname = layername(model, 1, 'down_proj')
    st = S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=50, precision='float64', progress=None, batch_tokens=100)
    ref, n = direct_mom2(model, tok, lname, TEXTS[:50], 64)
    assert st.count == n
    assert torch.allclose(st.mom2.moment(), ref, atol=1e-9)


def test_cache_reused_and_keyed(mt, tmp_path):
    model, tok = mt
    lname = layername(model, 1, 'down_proj')
    a = S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=40, precision='float32', progress=None)
    files = list(tmp_path.rglob('*.npz')); assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=40, precision='float32', progress=None)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(a.mom2.moment(), b.mom2.moment())
    S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=41, precision='float32', progress=None)
    S.layer_stats(model, tok, lname, tmp_path, TEXTS[::-1], sample_size=40, precision='float32', progress=None)
    assert len(list(tmp_path.rglob('*.npz'))) == 3
    with np.load(files[0], allow_pickle=False) as z: key = json.loads(str(z['rome_nb.key']))
    assert key['sample_size'] == 40 and key['layer'] == lname and key['precision'] == 'float32'


def test_corrupt_file_recomputed(mt, tmp_path):
    model, tok = mt
    lname = layername(model, 2, 'down_proj')
    a = S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=30, progress=None)
    f = next(tmp_path.rglob('*.npz'))
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.warns(UserWarning, match='recomputing'):
        b = S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=30, progress=None)
    assert torch.allclose(a.mom2.moment(), b.mom2.moment())
    # a file with NaNs is not trusted either
    with np.load(f, allow_pickle=False) as z: arr = {k: z[k] for k in z.files}
    arr['mom2.mom2'][0, 0] = np.nan
    arr.pop('rome_nb.digest')  # without its digest (which would catch the change first), as a reference file
    with open(f, 'wb') as fh: np.savez(fh, **arr)
    with pytest.warns(UserWarning, match='non-finite'):
        S.layer_stats(model, tok, lname, tmp_path, TEXTS, sample_size=30, progress=None)


def test_resume_after_interruption(mt, tmp_path, monkeypatch):
    model, tok = mt
    lname = layername(model, 1, 'down_proj')
    full = S.layer_stats(model, tok, lname, tmp_path / 'a', TEXTS, sample_size=120, progress=None)
    calls = {'n': 0}
    orig = S.collect_batch
    def boom(*a, **k):
        calls['n'] += 1
        if calls['n'] == 105: raise KeyboardInterrupt  # in the second group of 100 texts
        return orig(*a, **k)
    monkeypatch.setattr(S, 'collect_batch', boom)
    with pytest.raises(KeyboardInterrupt):
        S.layer_stats(model, tok, lname, tmp_path / 'b', TEXTS, sample_size=120, progress=None, checkpoint_every=0, batch_tokens=64)
    assert list((tmp_path / 'b').rglob('*.partial.npz'))
    monkeypatch.setattr(S, 'collect_batch', orig)
    seen = []
    monkeypatch.setattr(S, 'collect_batch', lambda *a, **k: (seen.append(1), orig(*a, **k))[1])
    res = S.layer_stats(model, tok, lname, tmp_path / 'b', TEXTS, sample_size=120, progress=None, batch_tokens=64)
    assert res.count == full.count and torch.allclose(res.mom2.moment(), full.mom2.moment(), atol=1e-7)
    assert not list((tmp_path / 'b').rglob('*.partial.npz'))
    assert len(seen) == 20  # one text per batch here: only the 20 texts after the checkpoint ran again


def test_reads_reference_npz(mt, tmp_path):
    model, tok = mt
    lname = layername(model, 0, 'down_proj')
    C = np.random.RandomState(0).randn(128, 128).astype(np.float32); C = C @ C.T
    model.config._name_or_path = 'some-org/some-model'
    try:
        f = S.stats_filename(tmp_path, 'some-org_some-model', 'wikipedia', lname, ['mom2'], 1000, 'float32', 64, 64)
        f.parent.mkdir(parents=True)
        with open(f, 'wb') as fh:  # the reference's layout, including pickled entries that must never be loaded
            np.savez(fh, **{'mom2.mom2': C * 500, 'mom2.count': np.array(500), 'mom2.constructor': np.array('x'),
                            'args': np.array({'a': 1}, dtype=object)})
        st = S.layer_stats(model, tok, lname, tmp_path, 'wikipedia', sample_size=1000, precision='float32', progress=None, download=False)
        assert np.allclose(st.mom2.moment().numpy(), C, rtol=1e-5)
    finally:
        model.config._name_or_path = ''


def test_offline_hub_dataset_is_a_clear_error(mt, tmp_path, monkeypatch):
    model, tok = mt
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    with pytest.raises(RuntimeError, match='local text'):
        S.layer_stats(model, tok, 0, tmp_path, 'wikitext', sample_size=10, progress=None)


def test_local_files(tmp_path, mt):
    model, tok = mt
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'a.txt').write_text('\n'.join(TEXTS[:10]))
    (tmp_path / 'd' / 'b.jsonl').write_text('\n'.join(json.dumps({'text': t}) for t in TEXTS[10:20]))
    ds_id, texts = S.dataset_texts(tmp_path / 'd')
    assert list(texts) == TEXTS[:20]
    st = S.layer_stats(model, tok, 1, tmp_path / 's', tmp_path / 'd', progress=None)
    assert st.count == sum(min(len(tok.encode(t)), 64) for t in TEXTS[:20])


def test_half_precision_model_accumulates_in_float64(mt, tmp_path):
    model, tok = mt
    lname = layername(model, 1, 'down_proj')
    m16 = tiny_model('gpt2', n_layer=3, n_embd=32).to(torch.bfloat16)
    st = S.layer_stats(m16, tok, lname, tmp_path, TEXTS, sample_size=20, precision='float64', progress=None)
    assert st.mom2.moment().dtype == torch.float64 and torch.isfinite(st.mom2.moment()).all()


def test_cli(tmp_path, mt):
    model, tok = mt
    model.save_pretrained(tmp_path / 'm'); tok.save_pretrained(tmp_path / 'm')
    (tmp_path / 'data.txt').write_text('\n'.join(TEXTS))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'rome_nb.stats', '--model_name', str(tmp_path / 'm'), '--dataset', str(tmp_path / 'data.txt'),
                        '--layers', '0,2', '--sample_size', '30', '--stats_dir', str(tmp_path / 's'), '--device', 'cpu',
                        '--precision', 'float64'], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / 's').rglob('*.npz'))
    assert len(files) == 2 and files[0].startswith('transformer.h.0.mlp.c_proj_float64_mom2_30')
    assert r.stdout.count('tokens;') == 2  # each layer once (the CLI runs once under python -m)


def test_param_sample_of_a_large_tensor():
    # fingerprints sample evenly spread values; float32 index steps used to overshoot tensors of ~10^7 values
    t = torch.arange(50257 * 768, dtype=torch.float32)  # GPT-2's embedding size
    a = np.frombuffer(S._param_sample(t), dtype=np.float32)
    assert len(a) == 64 and a[0] == 0 and a[-1] == t[-1].item() and (np.diff(a) > 0).all()
