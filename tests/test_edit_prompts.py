"The KL prompts and the starts of the context prefixes are hyperparameters: defaults as the reference, checked, used."
import json
import pytest
import torch
from rome_nb.models import tiny_model
from rome_nb.edit_core import KL_PROMPTS, CONTEXT_PROMPTS, get_context_templates
from rome_nb.editing import hparams_path
from rome_nb import rome as R
from rome_nb import memit as M

TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the river." for i in range(150)]
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}}


def hp_for(sd, **kw):
    base = dict(layers=[1], mom2_dataset=TEXTS, mom2_n_samples=150, stats_dir=str(sd),
                context_template_length_params=[[5, 5]], v_num_grad_steps=4)
    return R.ROMEHyperParams(**{**base, **kw})


@pytest.mark.parametrize('cls,alg', [(R.ROMEHyperParams, 'ROME'), (M.MEMITHyperParams, 'MEMIT')])
def test_defaults_are_the_references_and_old_files_load(cls, alg):
    for name in ('toy', 'gpt2-xl', 'EleutherAI_gpt-j-6B'):
        d = json.loads(hparams_path(alg, name).read_text())
        assert 'kl_prompts' not in d and 'context_prompts' not in d  # files written before these fields
        h = cls.from_dict(d)
        assert h.kl_prompts == ['{} is a'] == KL_PROMPTS
        assert h.context_prompts == ['The', 'Therefore', 'Because', 'I', 'You'] == CONTEXT_PROMPTS


@pytest.mark.parametrize('bad', [dict(kl_prompts=['is a']), dict(kl_prompts=[]), dict(kl_prompts='{} is a'),
                                 dict(kl_prompts=['{} and {}']), dict(context_prompts=[]),
                                 dict(context_prompts=['The', '']), dict(context_prompts=['{}'])])
def test_bad_prompts_fail_clearly(bad):
    with pytest.raises(ValueError, match='kl_prompts|context_prompts'):
        R.ROMEHyperParams(layers=[1], **bad)
    with pytest.raises(ValueError, match='kl_prompts|context_prompts'):
        M.MEMITHyperParams(layers=[1], **bad)


def test_json_roundtrip_keeps_prompts(tmp_path):
    h = R.ROMEHyperParams(layers=[3], kl_prompts=['{} was born in'], context_prompts=['Le', 'Donc'])
    h.to_json(tmp_path / 'h.json')
    assert R.ROMEHyperParams.from_json(tmp_path / 'h.json') == h


def test_context_prompts_start_the_templates(tok):
    model = tiny_model('gpt2', n_layer=3)
    ctx = get_context_templates(model, tok, [[5, 4]], prompts=['Zebra', 'Ocean'])
    assert len(ctx) == 5 and ctx[0] == '{}'
    assert all(t.startswith(('Zebra', 'Ocean')) for t in ctx[1:]), ctx


def test_execute_rome_uses_the_context_prompts(tok, sd):
    model = tiny_model('gpt2', n_layer=3)
    R.execute_rome(model, tok, REQ, hp_for(sd, context_prompts=['Zebra']))
    cache = model.__dict__['_rome_nb_context_templates']
    assert any(k[2] == ('Zebra',) for k in cache)
    assert all(t.startswith('Zebra') for t in next(v for k, v in cache.items() if k[2] == ('Zebra',))[1:])


def value(model, tok, hp):
    ctx = R.get_context_templates(model, tok, hp.context_template_length_params)
    req = R.check_request(REQ)
    u = R.compute_u(model, tok, req, hp, 1, ctx)
    return R.compute_v(model, tok, req, hp, 1, u, ctx)


def test_a_kl_prompt_changes_the_value(tok, sd):
    model = tiny_model('gpt2', n_layer=3)
    # the KL term reads the prediction at the subject's last token: only the words before it count
    kw = dict(kl_factor=1.0, v_num_grad_steps=8)
    v0 = value(model, tok, hp_for(sd, **kw))
    assert torch.equal(v0, value(model, tok, hp_for(sd, kl_prompts=['{} is a'], **kw)))  # the default, explicitly
    v1 = value(model, tok, hp_for(sd, kl_prompts=['The old story of {} is a'], **kw))
    assert (v0 - v1).abs().max() > 1e-6


def test_memit_uses_the_kl_prompts(tok):
    reqs = [R.check_request(REQ)]
    hp = M.MEMITHyperParams(layers=[1], kl_prompts=['{} was born in', 'I met {}'])
    batch = M._memit_batch(tok, reqs, ['{}'], 'subject_last', 'cpu', kl_prompts=hp.kl_prompts)[0]
    assert batch['input_ids'].shape[0] == 1 + 2
