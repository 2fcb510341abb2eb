"""Every method (ROME, MEMIT, FT, FT-L, KN, MEND, KE) validates all its requests the same way, before any weight changes;
whitespace is normalised with a warning; the subject is looked for where the method will tokenize it; hyperparameters
are checked when they are made."""
import json, warnings
import pytest
from _editors import REQ, REQ2, snapshot, same, gpt2, rome_hp, memit_hp, mend_hp, ke_hp
from rome_nb.models import tiny_tokenizer
from rome_nb import rome as R, memit as M, alphaedit as A
from rome_nb.editing import list_hparams, hparams_path
from rome_nb.baselines import ft as FT, kn as KN, mend as MEND, ke as KE

METHODS = ['ROME', 'MEMIT', 'FT', 'FT-L', 'KN', 'MEND', 'KE']


@pytest.fixture
def editors(editor_files, train_file, tmp_path, sd):
    "method name -> apply(model, tok, requests), with small settings."
    mend, ke = (mend_hp(train_file, tmp_path, editor_path=editor_files['MEND']),
                ke_hp(train_file, tmp_path, editor_path=editor_files['KE']))
    kn = KN.KNHyperParams(steps=2, batch_size=4, adaptive_threshold=0.5)
    return {'ROME': lambda m, t, r: R.apply_rome_to_model(m, t, r, rome_hp(sd)),
            'MEMIT': lambda m, t, r: M.apply_memit_to_model(m, t, r, memit_hp(sd)),
            'FT': lambda m, t, r: FT.apply_ft_to_model(m, t, r, FT.FTHyperParams(layers=[1], num_steps=1)),
            'FT-L': lambda m, t, r: FT.apply_ft_to_model(m, t, r, FT.FTHyperParams(layers=[1], num_steps=1,
                                                                                     norm_constraint=1e-3)),
            'KN': lambda m, t, r: KN.apply_kn_to_model(m, t, r, kn),
            'MEND': lambda m, t, r: MEND.apply_mend_to_model(m, t, r, mend, progress=False),
            'KE': lambda m, t, r: KE.apply_ke_to_model(m, t, r, ke, progress=False)}


BAD = {  # name -> (bad request, words the one-line error must contain)
    'no_slot': ({**REQ2, 'prompt': 'The Eiffel Tower is in'}, "'{}'"),
    'two_slots': ({**REQ2, 'prompt': '{} and {} are in'}, "'{}'"),
    'other_braces': ({**REQ2, 'prompt': '{} is in {city}'}, 'braces'),
    'prompt_not_str': ({**REQ2, 'prompt': None}, 'prompt must be a string'),
    'subject_int': ({**REQ2, 'subject': 123}, 'must be a string'),
    'subject_none': ({**REQ2, 'subject': None}, 'must be a string'),
    'subject_empty': ({**REQ2, 'subject': ''}, 'empty subject'),
    'subject_blank': ({**REQ2, 'subject': '  '}, 'empty subject'),
    'no_subject': ({'prompt': '{} is in', 'target_new': {'str': 'Rome'}}, 'lacks'),
    'no_target': ({'prompt': '{} is in', 'subject': 'The Eiffel Tower'}, 'lacks'),
    'target_int': ({**REQ2, 'target_new': 5}, 'must be a dict'),
    'target_list': ({**REQ2, 'target_new': ['Rome']}, 'must be a dict'),
    'target_no_str': ({**REQ2, 'target_new': {'id': 'Q1'}}, "'str'"),
    'target_empty': ({**REQ2, 'target_new': {'str': ''}}, 'empty target_new'),
    'target_none': ({**REQ2, 'target_new': None}, 'must be a dict'),
    'same_as_true': ({**REQ2, 'target_true': {'str': 'Rome'}}, 'equals target_true'),
    'true_not_dict': ({**REQ2, 'target_true': 7}, 'target_true'),
    'not_a_dict': (['{} is in', 'The Eiffel Tower'], 'a request is a dict'),
}


@pytest.mark.parametrize('method', METHODS)
def test_bad_requests_refused_before_any_change(method, editors, tok):
    model = gpt2()
    snap = snapshot(model)
    for name, (bad, words) in BAD.items():
        for reqs in ([bad], [REQ, bad]):  # a bad request after a good one: nothing of the good one stays
            with pytest.raises((ValueError, TypeError)) as e: editors[method](model, tok, reqs)
            assert words in str(e.value), (name, str(e.value))
            assert '\n' not in str(e.value).strip(), name
            assert same(model, snap), name


@pytest.mark.parametrize('method', METHODS)
def test_empty_or_malformed_request_list(method, editors, tok):
    model = gpt2()
    snap = snapshot(model)
    with pytest.raises(ValueError, match='no requests given'): editors[method](model, tok, [])
    with pytest.raises((ValueError, TypeError), match='requests must be'): editors[method](model, tok, 'LeBron James')
    assert same(model, snap)


@pytest.mark.parametrize('method', METHODS)
def test_subject_not_found_as_tokenized(method, editors):
    "A subject of characters the (lossy) tokenizer cannot spell is refused by every method, before any change."
    ltok = tiny_tokenizer('metaspace')
    model = gpt2()
    snap = snapshot(model)
    with pytest.raises(ValueError, match='not in the prompt'):
        editors[method](model, ltok, [REQ, {**REQ2, 'subject': 'Zqx Wv'}])
    assert same(model, snap)


@pytest.mark.parametrize('method', ['ROME', 'FT', 'KN', 'MEND'])
def test_whitespace_normalised_with_warning_same_edit(method, editors, tok):
    "Spaces around a subject or target (or ending a prompt) warn, and give the clean request's exact edit."
    m1, m2 = gpt2(), gpt2()
    messy = {**REQ, 'prompt': REQ['prompt'] + ' ', 'subject': ' ' + REQ['subject'] + ' ',
             'target_new': {'str': REQ['target_new']['str'] + ' '}}
    with pytest.warns(UserWarning, match='whitespace'): editors[method](m1, tok, [messy])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        editors[method](m2, tok, [REQ])
    assert not [x for x in w if 'whitespace' in str(x.message)]  # the clean request gives no such warning
    assert same(m1, snapshot(m2))


def test_counterfact_request_unchanged():
    rec = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'relation_id': 'P641',
           'target_new': {'str': 'football', 'id': 'Q2736'}, 'target_true': {'str': 'basketball', 'id': 'Q5372'}}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert R.check_request(rec) == rec


def test_int_subject_message():
    with pytest.raises(ValueError, match='subject must be a string, got int'): R.check_request({**REQ, 'subject': 7})


def test_fact_lookup_idx_lossy_tokenizer_prefix_mention():
    "A word-level tokenizer turns 'Boupofeir.' into <unk>: the prefix's mention is counted where it is searched."
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    words = ['<unk>', 'Bruda', 'Boupofeir', 'plays', 'the', 'sport', 'of']
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>'))
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token='<unk>')
    ids, i = R.fact_lookup_idx(tok, 'Bruda Boupofeir. {} plays the sport of', 'Bruda Boupofeir')
    assert ids == [1, 0, 1, 2, 3, 4, 5, 6] and i == 3  # the second 'Boupofeir' (the first became <unk>)
    assert R.fact_lookup_idx(tok, 'Bruda Boupofeir plays. {} plays', 'Bruda Boupofeir')[1] == 4
    assert R.fact_lookup_idx(tok, '{} plays', 'Bruda Boupofeir', 'subject_first')[1] == 0


@pytest.mark.parametrize('family_tok', ['bytelevel', 'metaspace'])
def test_fact_lookup_idx_prefix_mentions(family_tok):
    tok = tiny_tokenizer(family_tok)
    for prefix in ['', 'LeBron James plays. ', 'LeBron James. LeBron James! ', 'I saw LeBron James ']:
        ids, i = R.fact_lookup_idx(tok, prefix + '{} plays the sport of', 'LeBron James')
        n = len(tok.encode(prefix + 'LeBron James'))
        assert i == n - 1, (prefix, i, n)


# --- hyperparameters, checked when made

@pytest.mark.parametrize('cls', [R.ROMEHyperParams, M.MEMITHyperParams])
def test_mlp_edit_hparams_refused_when_made(cls):
    for kw, words in [({'clamp_norm_factor': float('nan')}, 'clamp_norm_factor=nan'),
                      ({'v_num_grad_steps': 0}, 'v_num_grad_steps=0'), ({'v_num_grad_steps': -3}, 'v_num_grad_steps'),
                      ({'v_lr': 1e38}, '(0, 1000]'), ({'v_lr': float('inf')}, 'v_lr'), ({'v_lr': 0}, 'v_lr'),
                      ({'kl_factor': -1.}, 'kl_factor'), ({'mom2_n_samples': 0}, 'mom2_n_samples'),
                      ({'v_weight_decay': float('nan')}, 'v_weight_decay')]:
        with pytest.raises(ValueError, match='out of range') as e: cls(layers=[1, 2], **kw)
        assert words in str(e.value)
        with pytest.raises(ValueError, match='out of range'): cls.from_dict({'layers': [1, 2], **kw})


def test_other_hparams_refused_when_made():
    cases = [(FT.FTHyperParams, {'layers': [0], 'lr': float('nan')}), (FT.FTHyperParams, {'layers': [0], 'lr': 0}),
             (FT.FTHyperParams, {'layers': [0], 'num_steps': 2.5}), (KN.KNHyperParams, {'lr_scale': float('nan')}),
             (KN.KNHyperParams, {'steps': -1}), (MEND.MENDHyperParams, {'lr_scale': float('inf')}),
             (MEND.MENDHyperParams, {'rank': 0}), (KE.EFKHyperParams, {'lr_scale': -1.}),
             (KE.EFKHyperParams, {'max_scale': float('nan')}), (M.MEMITHyperParams, {'layers': [1], 'mom2_update_weight': -1}),
             (M.MEMITHyperParams, {'layers': [1], 'z_batch_size': 0}), (R.ROMEHyperParams, {'layers': [1], 'v_lr': True})]
    for cls, kw in cases:
        with pytest.raises(ValueError, match='out of range'): cls(**kw)


def test_packaged_hparams_all_load():
    classes = {'ROME': R.ROMEHyperParams, 'MEMIT': M.MEMITHyperParams, 'AlphaEdit': A.AlphaEditHyperParams,
               'FT': FT.FTHyperParams,
               'KN': KN.KNHyperParams, 'MEND': MEND.MENDHyperParams, 'KE': KE.EFKHyperParams}
    names = list_hparams()
    assert len(names) >= 20
    for n in names:
        alg, model = n.split('/', 1)
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            hp = classes[alg].from_json(hparams_path(alg, model))
        assert classes[alg].from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
