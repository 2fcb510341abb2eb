"Files the package reads and writes: tampered, truncated, corrupt and malicious files are detected; a SIGKILL loses nothing."
import json, os, signal, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
import _editors
from _editors import stat_texts, rome_hp, memit_hp, read_cases
from rome_nb.models import tiny_model
from rome_nb import rome as R, stats as S, dsets as D, evaluate as E, summarize as SM

ROOT = Path(__file__).resolve().parents[1]
TEXTS = stat_texts(150, ' and the river')
REQ = {**_editors.REQ, 'target_new': {'str': 'soccer'}, 'target_true': {'str': 'basketball'}}


class Boom:
    "A pickle payload that leaves a mark on disk if it is ever unpickled."
    def __init__(self, mark): self.mark = str(mark)
    def __reduce__(self): return (Path.write_text, (Path(self.mark), 'unpickled!'))


def npz_with_pickle(path, mark, **arrays):
    "An .npz holding `arrays` plus an object array whose unpickling would write `mark`."
    np.savez(path, payload=np.array([Boom(mark)], dtype=object), **arrays)
    return path


# ---------------------------------------------------------------- edit files

def edit_parts(path):
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f: return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def write_edit(path, meta, tensors):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope='module')
def saved_edit(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp('edit')
    hp = rome_hp(d / 'stats', TEXTS, layers=[0], context_template_length_params=[[5, 5]], v_num_grad_steps=6)
    edit = R.RomeEdit.compute(tiny_model('gpt2'), tok, REQ, hp)
    return edit, edit.save(d / 'e.safetensors')


def test_edit_file_roundtrip_is_verified(saved_edit):
    edit, path = saved_edit
    meta, _ = edit_parts(path)
    assert meta['format'] == 'rome_nb.edit/2' and meta['digest'].startswith('sha256:')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a verified file loads without any warning
        loaded = R.RomeEdit.load(path)
    assert loaded.request == edit.request and loaded.layers == [0]
    for n, (u, v) in edit.deltas.items():
        assert torch.equal(loaded.deltas[n][0], u.float()) and torch.equal(loaded.deltas[n][1], v.float())


def test_edit_file_flipped_data_byte(saved_edit, tmp_path):
    _, path = saved_edit
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # the last bytes of a safetensors file are tensor data
    (tmp_path / 'flip.safetensors').write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r'flip\.safetensors fails its digest check'):
        R.RomeEdit.load(tmp_path / 'flip.safetensors')


def test_edit_file_changed_request(saved_edit, tmp_path):
    _, path = saved_edit
    meta, ts = edit_parts(path)
    req = json.loads(meta['request']); req['target_new']['str'] = 'golf'
    meta['request'] = json.dumps(req)
    with pytest.raises(ValueError, match='fails its digest check'):
        R.RomeEdit.load(write_edit(tmp_path / 'req.safetensors', meta, ts))


def test_edit_file_renamed_layer(saved_edit, tmp_path):
    _, path = saved_edit
    meta, ts = edit_parts(path)
    assert all('.h.0.' in k for k in ts)
    ts = {k.replace('.h.0.', '.h.1.'): v for k, v in ts.items()}
    meta['weights'] = meta['weights'].replace('.h.0.', '.h.1.')
    meta['layers'] = '[1]'
    with pytest.raises(ValueError, match='fails its digest check'):
        R.RomeEdit.load(write_edit(tmp_path / 'layer.safetensors', meta, ts))


def test_edit_file_old_format_loads_with_warning(saved_edit, tmp_path):
    edit, path = saved_edit
    meta, ts = edit_parts(path)
    meta['format'] = 'rome_nb.edit/1'; del meta['digest']
    old = write_edit(tmp_path / 'old.safetensors', meta, ts)
    with pytest.warns(UserWarning, match=r"old\.safetensors is an edit file of the old format 'rome_nb.edit/1'.*unverified"):
        loaded = R.RomeEdit.load(old)
    assert loaded.request == edit.request
    # an old file whose tensors do not match its weights is still refused
    meta['weights'] = json.dumps(['transformer.h.5.mlp.c_proj.weight'])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='do not match its weights'):
        R.RomeEdit.load(write_edit(tmp_path / 'old2.safetensors', meta, ts))


def test_edit_file_damaged_or_foreign(saved_edit, tmp_path):
    _, path = saved_edit
    (tmp_path / 'cut.safetensors').write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r'cut\.safetensors is not a readable edit file'):
        R.RomeEdit.load(tmp_path / 'cut.safetensors')
    mark = tmp_path / 'mark'
    torch.save({'x': Boom(mark)}, tmp_path / 'pickled.safetensors')  # a pickle under an edit file's name
    with pytest.raises(ValueError, match='not a readable edit file'):
        R.RomeEdit.load(tmp_path / 'pickled.safetensors')
    assert not mark.exists()
    with pytest.raises(FileNotFoundError, match='no edit file'):
        R.RomeEdit.load(tmp_path / 'none.safetensors')


def test_edit_save_is_atomic(saved_edit, tmp_path):
    edit, path = saved_edit
    dest = tmp_path / 'e.safetensors'
    dest.write_bytes(path.read_bytes())
    bad = R.RomeEdit(edit.request, {'w': ('not a tensor', None)}, edit.hparams, edit.model_name, edit.layers)
    with pytest.raises(Exception):
        bad.save(dest)
    assert dest.read_bytes() == path.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ['e.safetensors']


# ---------------------------------------------------------------- statistics

LNAME = 'transformer.h.1.mlp.c_proj'


def stats_of(model, tok, sd):
    return S.layer_stats(model, tok, LNAME, sd, TEXTS, sample_size=100, progress=None)


@pytest.fixture(scope='module')
def model(): return tiny_model('gpt2', n_layer=3)


@pytest.fixture
def computed(model, tok, tmp_path):
    "Statistics computed into a fresh cache: (stat, cache file)."
    st = stats_of(model, tok, tmp_path)
    return st, next(tmp_path.rglob('*.npz'))


def recomputed_warnings(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        out = fn()
    return out, [str(x.message) for x in w]


def test_stats_cache_carries_a_digest(computed):
    _, f = computed
    with np.load(f, allow_pickle=False) as z: assert 'rome_nb.digest' in z.files


def test_stats_cache_changed_values_recomputed(model, tok, tmp_path, computed):
    st, f = computed
    with np.load(f, allow_pickle=False) as z: arrays = {k: z[k] for k in z.files}
    arrays['mom2.mom2'] = arrays['mom2.mom2'] * 2  # still symmetric and PSD, same key: only the digest can tell
    with open(f, 'wb') as fh: np.savez(fh, **arrays)
    again, msgs = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    assert any('recomputing' in m and 'digest does not match' in m for m in msgs), msgs
    assert torch.equal(again.mom2.moment(), st.mom2.moment())


def test_stats_cache_truncated_recomputed(model, tok, tmp_path, computed):
    st, f = computed
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    again, msgs = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    assert any('recomputing' in m and 'unreadable' in m for m in msgs), msgs
    assert torch.equal(again.mom2.moment(), st.mom2.moment())


def test_reference_format_random_values_refused(model, tok, tmp_path, computed):
    "A file in the reference's format (no key, no digest) of the right shape with random values is not used."
    st, f = computed
    d = st.mom2.mom2.shape[0]
    rng = np.random.default_rng(0)
    ref = {'mom2.mom2': rng.standard_normal((d, d)).astype(np.float32), 'mom2.count': np.array(1000),
           'constructor': np.array('rome.runningstats.CombinedStat()')}
    with open(f, 'wb') as fh: np.savez(fh, **ref)
    got, why = S.read_stats(f, ['mom2'], width=d)
    assert got is None and 'not symmetric' in why
    sym = rng.standard_normal((d, d)); sym = (sym + sym.T) / 2  # symmetric, indefinite
    sym[np.diag_indices(d)] = np.abs(sym[np.diag_indices(d)])  # positive diagonal: only the eigenvalues tell
    with open(f, 'wb') as fh: np.savez(fh, **dict(ref, **{'mom2.mom2': sym}))
    got, why = S.read_stats(f, ['mom2'], width=d)
    assert got is None and 'positive semi-definite' in why
    again, msgs = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    assert any('recomputing' in m for m in msgs), msgs
    assert torch.equal(again.mom2.moment(), st.mom2.moment())


def test_reference_format_plausible_file_warns_once(model, tok, tmp_path, computed):
    st, f = computed
    ref = dict(st.state_dict(np.float32))  # what the reference writes: plain arrays, no key, no digest
    ref['constructor'] = np.array('rome.runningstats.CombinedStat()')
    with open(f, 'wb') as fh: np.savez(fh, **ref)
    first, msgs1 = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    _, msgs2 = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    unverified = [m for m in msgs1 + msgs2 if 'read unverified' in m]
    assert len(unverified) == 1 and str(f) in unverified[0], msgs1 + msgs2
    assert not any('recomputing' in m for m in msgs1 + msgs2)
    assert torch.allclose(first.mom2.moment().double(), st.mom2.moment().double(), rtol=1e-5)


def test_stats_corrupt_checkpoint_not_resumed(model, tok, tmp_path, computed):
    "A checkpoint that matches the key but was not written by the package (no valid digest) is ignored, not resumed from."
    st, f = computed
    with np.load(f, allow_pickle=False) as z: key = str(z['rome_nb.key'])
    d = st.mom2.mom2.shape[0]
    part = f.with_name(f.name[:-4] + '.partial.npz')
    with open(part, 'wb') as fh:
        np.savez(fh, **{'mom2.mom2': np.eye(d) * 5.0, 'mom2.count': np.array(5), 'rome_nb.key': np.array(key),
                        'rome_nb.texts_done': np.array(50)})
    f.unlink()
    again, msgs = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    assert any('ignoring the checkpoint' in m for m in msgs), msgs
    assert torch.equal(again.mom2.moment(), st.mom2.moment()) and again.count == st.count
    assert not part.exists()


def test_stats_pickle_never_loaded(model, tok, tmp_path, computed):
    st, f = computed
    mark = tmp_path / 'mark'
    npz_with_pickle(f, mark, **{'mom2.count': np.array(5)})
    f2 = npz_with_pickle(tmp_path / 'p.npz', mark, **{'mom2.mom2': np.eye(3), 'mom2.count': np.array(5)})
    assert S.read_stats(f2, ['mom2'], width=3)[0] is not None  # the object array is never accessed
    again, _ = recomputed_warnings(lambda: stats_of(model, tok, tmp_path))
    assert torch.equal(again.mom2.moment(), st.mom2.moment())
    assert not mark.exists()


# ---------------------------------------------------------------- datasets

def test_non_utf8_dataset_names_the_file(tmp_path):
    (tmp_path / 'counterfact.json').write_bytes('[{"case_id": 0, "x": "caf\u00e9"}]'.encode('latin-1'))
    with pytest.raises(D.MalformedRecordError, match=r'counterfact\.json is not UTF-8 text \(byte 0xe9'):
        D.CounterFactDataset(tmp_path)
    (tmp_path / 'counterfact-train.json').write_bytes(b'\xff\xfe[{"rephrase_prompt": 1}]')  # EasyEdit file sniffing
    assert D.easyedit_files(tmp_path / 'counterfact-train.json') == []


def test_invalid_json_user_file_not_told_to_delete(tmp_path):
    f = tmp_path / 'mine.json'
    f.write_text('[{"case_id": 0, ')
    with pytest.raises(D.MalformedRecordError) as e:
        D.CounterFactDataset(f)
    assert 'mine.json is not valid JSON' in str(e.value) and 'delete' not in str(e.value) and 'download it again' not in str(e.value)


def test_invalid_json_downloaded_file_told_to_delete(tmp_path, monkeypatch):
    def fake_download(url, dest, **kw):
        Path(dest).write_text('[{"case_id": 0, ')
        return dest
    monkeypatch.setattr(D, 'download_file', fake_download)
    monkeypatch.delenv('ROME_NB_OFFLINE', raising=False)
    with pytest.raises(D.MalformedRecordError, match=r'downloaded from https://rome\.baulab\.info/.*delete it to download it again'):
        D.CounterFactDataset(tmp_path)
    assert D.downloaded_from(tmp_path / 'counterfact.json').endswith('counterfact.json')


def test_zsre_answers_string_is_one_answer(tok):
    r = {'src': 'What does Toko Yasuda play?', 'subject': 'Toko Yasuda', 'rephrase': 'Toko Yasuda plays what?',
         'loc': 'nq question: who sang it', 'loc_ans': 'Bob', 'answers': 'the guitar'}
    assert D.zsre_record(r, 0, tok)['requested_rewrite']['target_new']['str'] == 'the guitar'
    for bad in ([], [''], [3], None, {'a': 1}):
        with pytest.raises(D.MalformedRecordError, match="field 'answers' must be a non-empty list"):
            D.zsre_record(dict(r, answers=bad), 0, tok)
    with pytest.raises(D.MalformedRecordError, match="zsRE field 'loc' must be a string"):
        D.zsre_record(dict(r, loc=None), 0, tok)


def test_idf_pickle_never_loaded(tmp_path):
    mark = tmp_path / 'mark'
    np.save(tmp_path / 'idf.npy', np.array([Boom(mark)], dtype=object), allow_pickle=True)
    (tmp_path / 'tfidf_vocab.json').write_text('{"a": 0}')
    with pytest.raises(D.MalformedRecordError, match=r'idf\.npy is not a readable \.npy array'):
        D.get_tfidf_vectorizer(tmp_path)
    np.save(tmp_path / 'idf.npy', np.array([np.nan]))
    with pytest.raises(D.MalformedRecordError, match='finite non-negative'):
        D.get_tfidf_vectorizer(tmp_path)
    assert not mark.exists()


# ---------------------------------------------------------------- evaluation and summaries

def test_empty_dataset_makes_no_run_folder(tmp_path):
    (tmp_path / 'counterfact.json').write_text('[]')
    with pytest.raises(ValueError, match='holds no records'):
        E.evaluate('FT', 'toy', hparams_fname='toy_constr.json', data_dir=tmp_path, records=[], results_dir=tmp_path / 'results',
                   skip_generation_tests=True, quiet=True, device='cpu')
    with pytest.raises(ValueError, match='holds no records'):
        E.evaluate('FT', 'toy', hparams_fname='toy_constr.json', dataset_size_limit=0, results_dir=tmp_path / 'results',
                   skip_generation_tests=True, quiet=True, device='cpu')
    assert not (tmp_path / 'results').exists()


def full_case(i):
    return {'case_id': i, 'requested_rewrite': {'prompt': '{} x', 'subject': 's'}, 'time': 0.1,
            'post': {'rewrite_prompts_probs': [{'target_new': 0.1, 'target_true': 2.0}]},
            'pre': {'rewrite_prompts_probs': [{'target_new': 2.0, 'target_true': 0.1}]}}


def test_finished_cases_needs_a_complete_record(tmp_path):
    for i in range(3): E.write_json_atomic(full_case(i), E.case_file(tmp_path, i))
    E.write_json_atomic({'case_id': 6}, E.case_file(tmp_path, 6))
    E.write_json_atomic([1, 2], E.case_file(tmp_path, 7))
    E.write_json_atomic(dict(full_case(8), case_id=9), E.case_file(tmp_path, 8))  # the id of another case
    E.write_json_atomic(dict(full_case(10), time='soon'), E.case_file(tmp_path, 10))
    E.case_file(tmp_path, 11).write_text(json.dumps(full_case(11))[:40])  # cut off
    E.case_file(tmp_path, 12).write_bytes(b'\xff\xfe')
    with pytest.warns(UserWarning) as w:
        assert E.finished_cases(tmp_path) == {0, 1, 2}
    msgs = ' '.join(str(x.message) for x in w)
    for i in (6, 7, 8, 10, 11, 12): assert f'case_{i}.json is not a complete result file' in msgs
    grouped = dict(full_case(4), grouped_case_ids=[4, 5], num_edits=2); del grouped['pre']
    E.write_json_atomic(grouped, E.case_file(tmp_path, 4, 2))
    E.write_json_atomic(dict(grouped, case_id=5, num_edits=3), E.case_file(tmp_path, 5, 2))
    with pytest.warns(UserWarning, match='num_edits'):
        assert E.finished_cases(tmp_path, 2) == {4}


def test_read_run_skips_non_results(tmp_path):
    for i in range(3): E.write_json_atomic(full_case(i), E.case_file(tmp_path, i))
    E.case_file(tmp_path, 3).write_text('[1, 2, 3]')
    E.case_file(tmp_path, 4).write_text('"a string"')
    E.case_file(tmp_path, 5).write_text('{"case_id": "five"}')
    E.case_file(tmp_path, 6).write_text(json.dumps(dict(full_case(6), post={'rewrite_prompts_probs': [1, 2]})))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        df = SM.read_run(tmp_path)
    assert list(df.index) == [0, 1, 2]
    assert [Path(p).name for p in df.attrs['skipped']] == ['case_3.json', 'case_4.json', 'case_5.json', 'case_6.json']
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 4 and 'case_3.json is not a result file (it holds a JSON list)' in msgs[0]


# ---------------------------------------------------------------- SIGKILL and resume

def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')


EVAL_KW = dict(alg_name='FT', model_name='toy', hparams_fname='toy_constr.json', dataset_size_limit=6,
               skip_generation_tests=True, quiet=True, device='cpu')

KILLED = '''
import os, signal, sys
from rome_nb import evaluate as E
params, apply = E.ALG_DICT['FT']
def apply_then_die(model, tok, requests, hparams, **kw):
    out = apply(model, tok, requests, hparams, **kw)
    if requests[0]['case_id'] == int(sys.argv[2]): os.kill(os.getpid(), signal.SIGKILL)  # killed mid-case, weights edited
    return out
E.ALG_DICT['FT'] = (params, apply_then_die)
E.evaluate(results_dir=sys.argv[1], **eval(sys.argv[3]))
'''


def evaluate_in_subprocess(results_dir, kill_at=-1, **extra):
    "Run the evaluation in a fresh interpreter (one thread, as every run here), killed by SIGKILL on case `kill_at`."
    return subprocess.run([sys.executable, '-c', KILLED, str(results_dir), str(kill_at), repr(dict(EVAL_KW, **extra))],
                          env=env(), capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_gives_the_same_case_files(tmp_path):
    "An evaluation killed mid-case, with a truncated and an incomplete case file, resumes to the files of an uninterrupted run."
    r = evaluate_in_subprocess(tmp_path / 'whole')
    assert r.returncode == 0, r.stderr
    r = evaluate_in_subprocess(tmp_path / 'cut', kill_at=3)
    assert r.returncode == -signal.SIGKILL, r.stderr
    run_dir = tmp_path / 'cut' / 'FT' / 'run_000'
    assert sorted(p.name for p in run_dir.glob('case_*.json')) == ['case_0.json', 'case_1.json', 'case_2.json']
    f0 = run_dir / 'case_0.json'
    f0.write_text(f0.read_text()[:100])  # cut off (as a writer that wrote in place would leave it)
    (run_dir / 'case_4.json').write_text('{"case_id": 4}')  # valid JSON, not a result
    r = evaluate_in_subprocess(tmp_path / 'cut', continue_from_run='run_000')
    assert r.returncode == 0, r.stderr
    whole = read_cases(tmp_path / 'whole' / 'FT' / 'run_000', drop=('time',))
    assert len(whole) == 6 and read_cases(run_dir, drop=('time',)) == whole
    assert 'case_0.json is not a complete result file' in r.stderr and 'case_4.json is not a complete result file' in r.stderr
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith('case_')) == ['params.json', 'run_info.json']


# ---------------------------------------------------------------- other files: MEMIT targets, traces, hyperparameters, toy world, texts

def test_memit_target_cache_tampered_or_pickled(tok, tmp_path):
    from rome_nb import memit as M
    hp = memit_hp(tmp_path / 'stats', TEXTS, context_template_length_params=[[5, 5]], v_num_grad_steps=6,
                  clamp_norm_factor=4)
    reqs = [dict(REQ, case_id=0)]
    model = tiny_model('gpt2', n_layer=4)
    tmpl = str(tmp_path / 'z' / 'layer_{}_clamp_{}_case_{}.npz')
    d1 = M.execute_memit(model, tok, reqs, hp, cache_template=tmpl)
    f = next((tmp_path / 'z').iterdir())
    with np.load(f, allow_pickle=False) as z: arrays = {k: z[k] for k in z.files}
    assert 'rome_nb.digest' in arrays
    np.savez(f, **dict(arrays, v_star=arrays['v_star'] * 3))  # changed, still a valid file with the reference's key
    with pytest.warns(UserWarning, match='digest does not match'):
        d2 = M.execute_memit(model, tok, reqs, hp, cache_template=tmpl)
    for k in d1: assert torch.equal(d1[k][1], d2[k][1])
    mark = tmp_path / 'mark'
    npz_with_pickle(f, mark, v_star=arrays['v_star'])
    with pytest.warns(UserWarning, match='cannot read the cached target'):
        M.execute_memit(model, tok, reqs, hp, cache_template=tmpl)
    assert not mark.exists()
    np.savez(f, v_star=np.full_like(arrays['v_star'], np.nan))
    with pytest.warns(UserWarning, match='non-finite'):
        M.execute_memit(model, tok, reqs, hp, cache_template=tmpl)
    assert not mark.exists()


def test_trace_cache_damaged_is_traced_again(tmp_path):
    from rome_nb.tracing import save_trace, load_trace, _cached_traces
    res = {'scores': torch.arange(6.).reshape(2, 3), 'low_score': 0.1, 'high_score': 0.9, 'input_tokens': ['a', 'b'],
           'subject_range': (0, 1), 'answer': 'x', 'kind': '', 'window': 10, 'correct_prediction': True}
    save_trace(tmp_path / 'k.npz', res)
    assert load_trace(tmp_path / 'k.npz')['answer'] == 'x' and [p.name for p in tmp_path.iterdir()] == ['k.npz']
    with np.load(tmp_path / 'k.npz', allow_pickle=False) as z: arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / 'changed.npz', **dict(arrays, scores=arrays['scores'] * 0))
    (tmp_path / 'cut.npz').write_bytes((tmp_path / 'k.npz').read_bytes()[:200])
    mark = tmp_path / 'mark'
    npz_with_pickle(tmp_path / 'pickled.npz', mark, scores=arrays['scores'])
    paths = {None: tmp_path / 'changed.npz', 'mlp': tmp_path / 'cut.npz', 'attn': tmp_path / 'pickled.npz'}
    with pytest.warns(UserWarning) as w:
        assert _cached_traces(paths, [None, 'mlp', 'attn']) == {}
    msgs = ' '.join(str(x.message) for x in w)
    assert 'changed.npz fails its digest check' in msgs and 'cut.npz is not a readable trace result' in msgs
    assert 'pickled.npz is not a readable trace result' in msgs and not mark.exists()


def test_hparams_file_errors_name_the_file(tmp_path):
    (tmp_path / 'h.json').write_text('{"layers": [1], ')
    with pytest.raises(ValueError, match=r'h\.json is not valid JSON'):
        R.ROMEHyperParams.from_json(tmp_path / 'h.json')
    (tmp_path / 'h.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match=r'h\.json must hold a JSON object'):
        R.ROMEHyperParams.from_json(tmp_path / 'h.json')
    (tmp_path / 'h.json').write_bytes(b'{"layers": [1], "x": "\xff"}')
    with pytest.raises(ValueError, match=r'h\.json is not UTF-8'):
        R.ROMEHyperParams.from_json(tmp_path / 'h.json')
    h = R.ROMEHyperParams(layers=[3])
    h.to_json(tmp_path / 'h.json')
    assert R.ROMEHyperParams.from_json(tmp_path / 'h.json') == h and [p.name for p in tmp_path.iterdir()] == ['h.json']


def test_toy_world_file_errors(tmp_path):
    from rome_nb.toyworld import load_world, TOY_DIR
    (tmp_path / 'world.json').write_text('{"subjects": ')
    with pytest.raises(ValueError, match=r'world\.json is not valid JSON.*rome_nb_toy_train'):
        load_world(tmp_path)
    (tmp_path / 'world.json').write_text('{"subjects": 3}')
    with pytest.raises(ValueError, match=r'world\.json is not a toy world'):
        load_world(tmp_path)
    assert load_world(TOY_DIR).subjects  # the packaged world still loads


def test_stats_text_files_name_the_file(tmp_path, model, tok):
    (tmp_path / 'a.jsonl').write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r'a\.jsonl, line 2: not UTF-8'):
        S.layer_stats(model, tok, LNAME, tmp_path / 's', tmp_path / 'a.jsonl', progress=None)
    (tmp_path / 'a.jsonl').write_text('{"text": "one"}\n{"text": \n')
    with pytest.raises(ValueError, match=r'a\.jsonl, line 2: not JSON'):
        S.layer_stats(model, tok, LNAME, tmp_path / 's', tmp_path / 'a.jsonl', progress=None)
    (tmp_path / 'b.json').write_bytes(b'["caf\xe9"]')
    with pytest.raises(ValueError, match=r'b\.json is not UTF-8'):
        S.layer_stats(model, tok, LNAME, tmp_path / 's', tmp_path / 'b.json', progress=None)


def test_run_info_snippets_and_vocab_checked(tmp_path):
    run = tmp_path / 'results' / 'FT' / 'run_000'
    run.mkdir(parents=True)
    (run / 'run_info.json').write_text('[1]')
    with pytest.raises(ValueError, match=r'run_info\.json is not a JSON object'):
        E.evaluate(results_dir=tmp_path / 'results', continue_from_run='run_000', **EVAL_KW)
    (run / 'run_info.json').write_text('{"alg_name": ')
    with pytest.raises(ValueError, match=r'run_info\.json is not valid JSON'):
        E.evaluate(results_dir=tmp_path / 'results', continue_from_run='run_000', **EVAL_KW)
    with pytest.raises(D.MalformedRecordError, match="field 'samples' must be a list"):
        D.AttributeSnippets.from_list([{'relation_id': 'P1', 'target_id': 'Q1', 'samples': 'a text'}])
    with pytest.raises(ValueError, match='vocabulary must map words to column numbers'):
        D.tfidf_vectorizer_from_stats(np.ones(2), {'a': 0, 'b': 7})


def test_trace_run_params_checked(tmp_path):
    from rome_nb.tracing import _check_run_params
    _check_run_params(tmp_path, {'window': 2})
    assert json.loads((tmp_path / 'params.json').read_text()) == {'window': 2}
    (tmp_path / 'params.json').write_text('[2]')
    with pytest.raises(ValueError, match=r'params\.json is not a JSON object'):
        _check_run_params(tmp_path, {'window': 2})
    (tmp_path / 'params.json').write_text('{"window": ')
    with pytest.raises(ValueError, match=r'params\.json is not valid JSON'):
        _check_run_params(tmp_path, {'window': 2})


def test_failed_download_leaves_no_folder(tmp_path):
    "A download whose server never answers makes no folder and no partial file (port 9: nothing listens)."
    from rome_nb.dsets import download_file
    dest = tmp_path / 'new' / 'cf.json'
    with pytest.raises(OSError): download_file('http://127.0.0.1:9/cf.json', dest, timeout=5, progress=False)
    assert not (tmp_path / 'new').exists()
