"Dataset loaders on the real files in ../shared/data, local paths, offline errors and malformed records."
import json, os
from pathlib import Path
import pytest
from rome_nb import dsets as D
from rome_nb.models import tiny_tokenizer
import standin_alg


def test_easyedit_counterfact_real(shared_data):
    ds = D.CounterFactDataset(shared_data / 'counterfact-easyedit')
    assert len(ds) == 21919 and [r['case_id'] for r in ds] == list(range(21919))
    raw = {r['case_id']: r for f in sorted((shared_data / 'counterfact-easyedit').glob('*.json')) for r in json.loads(f.read_text())}
    for r in ds.data[::997]:  # the conversion keeps every field it can
        e, rw = raw[r['case_id']], r['requested_rewrite']
        assert rw['prompt'].format(rw['subject']) == e['prompt'] and rw['target_new']['str'] == e['target_new']
        assert rw['target_true']['str'] == e['ground_truth'] and r['paraphrase_prompts'] == [e['rephrase_prompt']]
        assert r['neighborhood_prompts'] == [e['locality_prompt']] and e['locality_ground_truth'] == e['ground_truth']
    assert D.record_requests(ds.data[:2])[1]['case_id'] == 1
    assert len(D.CounterFactDataset(shared_data / 'counterfact-easyedit', size=100)) == 100


def test_zsre_and_knowns_real(shared_data):
    tok = tiny_tokenizer()
    zs = D.MENDQADataset(shared_data / 'zsre' / 'zsre_mend_train-1k.json', tok=tok)
    assert len(zs) == 1000 and zs[0]['requested_rewrite']['prompt'] == 'What is the product made by {}?'
    assert zs[0]['requested_rewrite']['target_true']['str'] == '<|endoftext|>'
    raw = json.loads((shared_data / 'zsre' / 'zsre_mend_train-1k.json').read_text())
    for r, z in zip(raw[:50], zs):
        if not r['loc_ans'].isascii(): continue  # a token may hold part of a character: decoded alone, it is not the text
        assert ''.join(n['target'] for n in z['neighborhood_prompts']) == ' ' + r['loc_ans']
        assert all(n['prompt'].startswith(r['loc'] + '?') for n in z['neighborhood_prompts'])
    kn = D.KnownsDataset(shared_data, size=5)
    assert len(kn) == 5 and kn[0]['prompt'].startswith(kn[0]['subject'])


def test_download_missing_offline(tmp_path, monkeypatch):
    monkeypatch.delenv('ROME_NB_OFFLINE', raising=False)
    with pytest.raises(D.DataFileMissing, match=r'counterfact.json is not in .*could not be downloaded from http://127.0.0.1:9/x.*put it at'):
        D.fetch_data_file('counterfact.json', tmp_path, url='http://127.0.0.1:9/x')
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv('ROME_NB_OFFLINE', '1')
    with pytest.raises(D.DataFileMissing, match=f'https://memit.baulab.info/data/dsets/multi_counterfact.json'):
        D.MultiCounterFactDataset(tmp_path)
    assert D.DATA_URLS['counterfact.json'] == 'https://rome.baulab.info/data/dsets/counterfact.json'


def test_local_paths_size_and_malformed(tmp_path):
    recs = [standin_alg.make_record(i) for i in range(6)]
    (tmp_path / 'counterfact.json').write_text(json.dumps(recs))
    assert len(D.CounterFactDataset(tmp_path, size=4)) == 4
    assert D.CounterFactDataset(tmp_path / 'counterfact.json')[5] == recs[5]
    recs[5]['requested_rewrite']['target_new'] = 'football'  # a string instead of {"str": ...}
    (tmp_path / 'counterfact.json').write_text(json.dumps(recs))
    with pytest.raises(D.MalformedRecordError, match=r"record 5 \(case_id 5\): field 'requested_rewrite.target_new' must be an object"):
        D.CounterFactDataset(tmp_path)


def test_tfidf_roundtrip(tmp_path):
    texts = D.AttributeSnippets.from_list(standin_alg.snippets()).texts()
    vec = D.fit_tfidf_vectorizer(texts)
    D.save_tfidf_stats(vec, tmp_path)
    vec2 = D.get_tfidf_vectorizer(tmp_path)
    assert (vec2.transform(['plays football']) != vec.transform(['plays football'])).nnz == 0
