"The toy world from plain Python: world, records, the packaged model, the retraining CLI."
import json, os, subprocess, sys, time
import pytest
from rome_nb import toyworld as tw
from rome_nb.models import ModelAndTokenizer, MODEL_ALIASES, TOY_DIR


def test_world_is_deterministic_and_round_trips():
    w = tw.make_world()
    assert len(w.subjects) == 200 and len(w.relations) == 8 and len(w.facts) == 1600
    assert tw.make_world().facts == w.facts and tw.make_world(seed=1).facts != w.facts
    back = tw.world_from_dict(json.loads(json.dumps(tw.world_to_dict(w))))
    assert back.facts == w.facts and back.relations == w.relations
    with pytest.raises(ValueError, match="n_first \\* n_last"): tw.make_world(n_first=2, n_last=2, n_subjects=10)


def test_packaged_world_matches_generator():
    w = tw.load_world()
    assert w.facts == tw.make_world(**w.params).facts


def test_counterfact_records_have_reference_schema():
    w = tw.load_world()
    recs = tw.toy_counterfact(w, 50)
    assert [r['case_id'] for r in recs] == list(range(50))
    for r in recs:
        rr = r['requested_rewrite']
        assert set(rr) == {'prompt', 'relation_id', 'target_new', 'target_true', 'subject'}
        assert '{}' in rr['prompt'] and w.facts[(rr['subject'], rr['relation_id'])] == rr['target_true']['str']
        assert rr['target_new']['str'] != rr['target_true']['str'] and rr['target_new']['id'].startswith('Q')
        assert len(r['paraphrase_prompts']) == 2 and len(r['neighborhood_prompts']) == 10
        assert len(r['attribute_prompts']) == 10 and len(r['generation_prompts']) == 10
    assert len({r['requested_rewrite']['relation_id'] for r in recs}) == 8  # the first cases mix relations


def test_packaged_model_loads_and_recalls():
    t0 = time.time()
    mt, w = tw.load_toy()
    print(f"load_toy: {time.time() - t0:.2f} s")
    assert type(mt.model).__name__ == 'GPT2LMHeadModel'
    facts = [(s, r.relation_id) for s in w.subjects[:40] for r in w.relations]
    assert tw.fact_recall(mt.model, mt.tokenizer, w, facts, lambda r: r.templates[0]) >= 0.95
    assert tw.fact_recall(mt.model, mt.tokenizer, w, facts, lambda r: r.paraphrase_templates[0]) >= 0.9
    assert MODEL_ALIASES['toy'] == TOY_DIR
    mt2 = ModelAndTokenizer('toy', device='cpu')
    assert mt2.num_layers == mt.num_layers


def test_knowns_snippets_zsre():
    mt, w = tw.load_toy()
    ks = tw.toy_knowns(w, mt, n=30)
    assert len(ks) == 30 and all(k['prediction'].startswith(' ' + k['attribute']) for k in ks)
    sn = tw.toy_attribute_snippets(w)
    assert {s['relation_id'] for s in sn} == {r.relation_id for r in w.relations}
    zs = tw.toy_zsre(w, 5, tok=mt.tokenizer)
    assert len(zs) == 5 and zs[0]['requested_rewrite']['target_true']['str'] == '<|endoftext|>'
    ds_id, texts = tw.toy_stats_corpus(50)
    assert ds_id.startswith('toy-') and len(texts) == 50


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="toy model is missing"): tw.load_toy(tmp_path / 'nothing')


def test_train_cli_small_run(tmp_path):
    out = tmp_path / 'toy'
    r = subprocess.run([sys.executable, '-m', 'rome_nb.toyworld', '--out_dir', str(out), '--steps', '4', '--n_docs', '3000',
                        '--eval_every', '2', '--quiet', '--threads', '1'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'all facts' in r.stdout
    for f in ('config.json', 'model.safetensors', 'tokenizer.json', 'world.json', 'train_log.json'): assert (out / f).exists(), f
    log = json.loads((out / 'train_log.json').read_text())
    assert log['config']['steps'] == 4 and len(log['loss']) == 4 and len(log['evals']) == 2
    mt, w = tw.load_toy(out)
    assert mt.num_layers == tw.TOY_TRAIN_DEFAULTS['n_layer'] and len(w.facts) == 1600


@pytest.mark.slow
def test_retrain_from_scratch_reaches_recall(tmp_path):
    mt, w, log = tw.train_toy_model(tmp_path / 'toy', progress=False)
    tab, _ = tw.recall_table(mt, w)
    print(tab, f"\n{log['wall_s']:.0f} s wall, {log['cpu_s']:.0f} s CPU")
    assert tab.loc['all facts', 'training'] >= 0.98 and tab.loc['all facts', 'paraphrase'] >= 0.95


def test_packaged_toy_is_named_by_its_alias():
    "The packaged model is named 'toy', not by a folder of the machine (notebook outputs show the name)."
    mt, _ = tw.load_toy()
    assert mt.model_name == 'toy' and str(TOY_DIR) not in repr(mt)
    assert tw.load_toy(TOY_DIR)[0].model_name == str(TOY_DIR)  # a folder given is kept as given
