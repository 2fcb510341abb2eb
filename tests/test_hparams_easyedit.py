"The packaged ROME hyperparameters for Llama-3-8B, Mistral-7B and Qwen2.5-7B (from EasyEdit): they load, fit their family, edit."
import json, warnings
from dataclasses import replace
import pytest
import torch
from rome_nb.models import tiny_model, tiny_tokenizer
from rome_nb.nethook import get_parameter
from rome_nb.editing import hparams_path
from rome_nb.edit_core import rome_templates, KL_PROMPTS, CONTEXT_PROMPTS
from rome_nb import rome as R

# hub name -> (family, number of layers of the real model, yaml file in zjunlp/EasyEdit)
MODELS = {'meta-llama/Meta-Llama-3-8B': ('llama', 32, 'llama3-8b.yaml'),
          'mistralai/Mistral-7B-v0.1': ('mistral', 32, 'mistral-7b.yaml'),
          'Qwen/Qwen2.5-7B': ('qwen2', 28, 'qwen2.5-7b.yaml')}
TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the river." for i in range(60)]
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}}


def load(name):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no unknown field
        return R.ROMEHyperParams.from_json(hparams_path('ROME', name))


@pytest.mark.parametrize('name', sorted(MODELS))
def test_values_and_source(name):
    family, n_layers, yaml = MODELS[name]
    p = hparams_path('ROME', name)
    assert p.name == name.replace('/', '_') + '.json' and p.parent.name == 'ROME'
    h = load(name)
    assert h.source['repo'] == 'zjunlp/EasyEdit' and h.source['path'] == f'hparams/ROME/{yaml}'
    assert len(h.source['commit']) == 40
    assert (h.layers, h.fact_token, h.v_num_grad_steps, h.v_lr, h.v_weight_decay) == ([5], 'subject_last', 25, 0.5, 1e-3)
    assert (h.clamp_norm_factor, h.kl_factor, h.mom2_adjustment) == (4, 0.0625, False)
    assert h.context_template_length_params == [[5, 10], [10, 10]]
    assert h.v_loss_layer == n_layers - 1  # the last block of the real model
    assert (h.mom2_dataset, h.mom2_n_samples, h.mom2_dtype) == ('wikipedia', 100000, 'float32')
    assert (h.kl_prompts, h.context_prompts) == (KL_PROMPTS, CONTEXT_PROMPTS)
    assert 'source' in json.loads(p.read_text()) and h.to_dict()['source'] == h.source


@pytest.mark.parametrize('name', sorted(MODELS))
def test_module_names_fit_and_an_edit_runs(name, tmp_path):
    family, n_layers, _ = MODELS[name]
    model, tok = tiny_model(family, num_hidden_layers=n_layers), tiny_tokenizer()
    h = load(name)
    tm = rome_templates(model, h)
    for k in ('rewrite_module_tmp', 'layer_module_tmp', 'mlp_module_tmp', 'attn_module_tmp', 'ln_f_module', 'lm_head_module'):
        assert tm[k] == getattr(h, k)  # the file's names, checked against the model
    h = replace(h, v_num_grad_steps=3, context_template_length_params=[[5, 5]], mom2_dataset=TEXTS, mom2_n_samples=60,
                stats_dir=str(tmp_path))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, orig = R.apply_rome_to_model(model, tok, [REQ], h, return_orig_weights=True)
    assert list(orig) == ['model.layers.5.mlp.down_proj.weight']
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == ['model.layers.5.mlp.down_proj.weight']
    assert torch.isfinite(get_parameter(model, changed[0])).all()
