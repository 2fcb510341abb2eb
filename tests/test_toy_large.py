"The second embedded world, toy-large: recipe, world, records, checksummed loading, the recipe option (fast)."
import json, shutil
from pathlib import Path
import pytest
import torch
from rome_nb import toyworld as tw
from rome_nb import toy_large as tl
from rome_nb.models import (MODEL_ALIASES, TOY_DIR, TOY_LARGE_DIR, get_model, verify_checksums, write_checksums,
                            file_sha256, resolve_model_name, tiny_model, tiny_tokenizer)

HAVE_WEIGHTS = (TOY_LARGE_DIR / 'model.safetensors').is_file()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="toy-large weights not packaged yet")


@pytest.fixture(scope='module')
def world():
    return tw.recipe_world(tw.TOY_LARGE_DEFAULTS)


def test_recipe_size_fits():
    cfg = tw.TOY_LARGE_DEFAULTS
    assert cfg['n_inner'] >= 1024 and cfg['n_layer'] >= 8 and 192 <= cfg['n_embd'] <= 256
    assert tl.gpt2_n_params(cfg) * 4 <= 25e6
    assert tl.gpt2_n_params(tw.TOY_TRAIN_DEFAULTS) == tw.toy_train_log()['n_params']
    assert tw.toy_recipe('small') is tw.TOY_TRAIN_DEFAULTS and tw.toy_recipe('large') is tw.TOY_LARGE_DEFAULTS
    with pytest.raises(ValueError, match="unknown toy recipe 'huge'"): tw.toy_recipe('huge')


def test_small_recipe_unchanged():
    assert tw.TOY_TRAIN_DEFAULTS == dict(
        seed=0, n_first=30, n_last=200, n_subjects=200, n_objects=12, n_relations=8, n_docs=60000,
        mix=tw.DEFAULT_MIX, vocab_size=1024, n_layer=6, n_embd=96, n_head=4, n_ctx=128, steps=2000,
        batch_size=16, lr=8e-3, warmup=50, weight_decay=0.0, eval_every=250, n_eval=400, model_type='gpt2')
    assert tw.recipe_world(tw.TOY_TRAIN_DEFAULTS).facts == tw.load_world().facts


def test_world_shape(world):
    assert len(world.subjects) == len(set(world.subjects)) == 4000
    assert len(world.facts) == 4000 and {len(world.relations_of(s)) for s in world.subjects} == {1}
    assert len(world.first_names) == len(world.last_names) == 64
    sharing = tl.name_sharing(world)
    assert sharing['fewest people'].min() >= 2  # no name part identifies a person
    assert [r.relation_id for r in world.relations] == [r.relation_id for r in tw.make_relations()]
    assert all(r.paraphrase_templates for r in world.relations)


def test_edit_sets_have_distinct_subjects(world):
    for n in (1000, 2000, 4000):
        recs = tw.toy_counterfact(world, n)
        assert len({r['requested_rewrite']['subject'] for r in recs}) == n
    recs = tw.toy_counterfact(world, 2000)
    for r in recs[:50]:
        rr = r['requested_rewrite']
        assert world.facts[(rr['subject'], rr['relation_id'])] == rr['target_true']['str']
        assert len(r['neighborhood_prompts']) == 10 and len(r['attribute_prompts']) == 10
    assert len({r['requested_rewrite']['relation_id'] for r in recs}) == 8
    assert len(tw.toy_counterfact(world)) == 4000


def test_other_records(world):
    ks = tw.toy_knowns(world, n=1000)
    assert len({k['subject'] for k in ks}) == 1000
    assert all(world.facts[(k['subject'], k['relation_id'])] == k['attribute'] for k in ks)
    zs = tw.toy_zsre_raw(world, 2000)
    assert len({z['subject'] for z in zs}) == 2000 and all(z['loc_ans'] for z in zs)
    snips = tw.toy_attribute_snippets(world)
    assert len(snips) == 8 * 12 and all(s['samples'] for s in snips)


def test_sparse_corpus_states_only_existing_facts():
    w = tw.keep_facts(tw.make_world(n_subjects=40, n_first=8, n_last=10), 1)
    assert {len(w.relations_of(s)) for s in w.subjects} == {1}
    docs = tw.toy_corpus(w, 300)  # stating a fact the world lacks would raise a KeyError
    s = w.subjects[0]
    (r,) = w.relations_of(s)
    told = [d for d in docs if d.startswith((s + ' ', s + "'"))]
    assert told and all(w.facts[(s, r.relation_id)] in d for d in told)


def test_alias_and_out_dir():
    assert MODEL_ALIASES['toy-large'] == TOY_LARGE_DIR and MODEL_ALIASES['toy'] == TOY_DIR
    assert resolve_model_name('toy-large') == str(TOY_LARGE_DIR)
    assert tw.toy_out_dir(overwrite_packaged=True, recipe='large') == TOY_LARGE_DIR
    assert tw.toy_out_dir(overwrite_packaged=True) == TOY_DIR
    with pytest.raises(ValueError, match='unknown toy recipe'): tw.toy_out_dir(overwrite_packaged=True, recipe='x')


def test_recipe_option_trains_a_sparse_world(tmp_path):
    mt, w, log = tw.train_toy_model(tmp_path / 'm', progress=False, recipe='large', n_subjects=30, n_first=6,
                                    n_last=6, n_docs=300, n_layer=2, n_embd=32, n_head=2, n_inner=64,
                                    steps=4, eval_every=2, n_eval=20, vocab_size=400)
    assert mt.model.config.n_inner == 64 and log['config']['facts_per_subject'] == 1
    assert len(w.facts) == 30 and tw.load_world(tmp_path / 'm').facts == w.facts
    with pytest.raises(TypeError, match="unknown training options"): tw.train_toy_model(None, recipe='large', x=1)


def _saved_tiny(folder):
    mt = get_model((tiny_model('gpt2'), tiny_tokenizer()), device='cpu')
    mt.model.save_pretrained(folder)
    mt.tokenizer.save_pretrained(folder)
    return folder


def test_checksum_checked_on_load(tmp_path):
    d = _saved_tiny(tmp_path / 'tiny')
    write_checksums(d)
    lines = (d / 'SHA256SUMS').read_text().split('\n')
    assert lines[0] == f"{file_sha256(d / 'model.safetensors')}  model.safetensors"
    get_model(d, device='cpu')  # matches: loads
    data = bytearray((d / 'model.safetensors').read_bytes())
    data[-1] ^= 1
    (d / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(ValueError, match='does not match its checksum'): get_model(d, device='cpu')
    MODEL_ALIASES['tiny-checked'] = d
    try:
        with pytest.raises(ValueError, match='damaged or replaced'): get_model('tiny-checked', device='cpu')
    finally: del MODEL_ALIASES['tiny-checked']
    (d / 'model.safetensors').unlink()
    with pytest.raises(ValueError, match='SHA-256 missing'): verify_checksums(d)


@needs_weights
def test_packaged_model_loads(world):
    verify_checksums(TOY_LARGE_DIR)
    assert (TOY_LARGE_DIR / 'model.safetensors').stat().st_size <= 25e6
    mt, w = tw.load_toy('toy-large')
    assert w.facts == world.facts and tw.toy_world_for('toy-large').facts == world.facts
    assert mt.model_name == 'toy-large' and mt.num_layers == tw.TOY_LARGE_DEFAULTS['n_layer']
    assert mt.model.config.n_inner == tw.TOY_LARGE_DEFAULTS['n_inner']
    assert next(mt.model.parameters()).dtype == torch.float32
    log = tw.toy_train_log('toy-large')
    assert log['config'] == {k: list(v) if isinstance(v, tuple) else v for k, v in tw.TOY_LARGE_DEFAULTS.items()}
    assert 'wall_s' in log and 'cpu_s' in log and log['steps'][-1] == log['config']['steps']
    facts = [(s, rid) for s, rid, _ in world.fact_list()][:500]  # the weights recall what the log says
    recall = tw.fact_recall(mt.model, mt.tokenizer, world, facts, lambda r: r.templates[0])
    assert abs(recall - log['evals'][-1]['train']) <= 0.1, (recall, log['evals'][-1])


@needs_weights
def test_names_need_several_tokens(world):
    tok = get_model('toy-large', device='cpu').tokenizer
    sharing = tl.token_sharing(world, tok)
    assert sharing['sharing_rarest_token'].min() >= 2 and sharing['sharing_last_token'].min() >= 2


def test_stats_dataset_alias(world):
    from rome_nb.stats import dataset_texts
    ds_id, texts = dataset_texts('toy-large')
    assert ds_id.startswith('toy-large-') and ds_id.endswith('-20000')
    first = [next(texts) for _ in range(200)]
    assert any(s in t for t in first for s in world.subjects)  # the large world's people, not the small toy's
    small_id, _ = dataset_texts('toy')
    assert small_id.startswith('toy-') and not small_id.startswith('toy-large') and small_id != ds_id


def test_packaged_hparams_for_toy_large():
    "ROME, MEMIT and AlphaEdit have toy-large files, found by the model's name, reading toy-large's statistics."
    from rome_nb.editing import hparams_path, default_hparams_fname
    from rome_nb.rome import ROMEHyperParams
    from rome_nb.memit import MEMITHyperParams
    from rome_nb.alphaedit import AlphaEditHyperParams
    fname = default_hparams_fname('toy-large')
    assert fname == 'toy-large.json'
    cfg = tw.TOY_LARGE_DEFAULTS
    for alg, cls in (('ROME', ROMEHyperParams), ('MEMIT', MEMITHyperParams), ('AlphaEdit', AlphaEditHyperParams)):
        hp = cls.from_json(hparams_path(alg, fname))
        assert hp.mom2_dataset == 'toy-large'
        assert all(0 <= l < cfg['n_layer'] for l in hp.layers)
        assert hp.source, f"{alg}/toy-large.json says where its values come from"


def test_unedited_recall_on_a_sparse_world(monkeypatch):
    "The harness's recall of unedited people asks only the facts a sparse world has (one per person here)."
    from rome_nb import sequential as sq
    w = tw.load_world(TOY_LARGE_DIR)
    seen = []
    monkeypatch.setattr(sq, 'fact_recall', lambda m, t, world, facts, fn: seen.append(facts) or 1.0)
    keep = set(w.subjects[:3])
    assert sq.unedited_recall(None, None, w, set(w.subjects) - keep) == 1.0
    assert sorted(seen[0]) == sorted(f for f in w.facts if f[0] in keep)
    assert len(seen[0]) == 3  # one fact each, not one per relation
