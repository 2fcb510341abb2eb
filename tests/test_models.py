"The architecture adapter over ten families, tokenization and subject ranges, from plain Python."
import copy
import pytest
import torch
from rome_nb.models import (TINY_CONFIGS, tiny_model, tiny_tokenizer, detect_arch, model_arch, set_arch, layername,
                            KINDS, ArchitectureError, ModelAndTokenizer, make_inputs, find_token_range, predict_token,
                            generate_fast)
from rome_nb.nethook import get_module, get_parameter, Trace, TraceDict, untuple

FAMILIES = list(TINY_CONFIGS)
EXPECTED_REWRITE = {'gpt2': 'c_proj', 'gptj': 'fc_out', 'gpt_neo': 'c_proj', 'gpt_neox': 'dense_4h_to_h',
                    'llama': 'down_proj', 'mistral': 'down_proj', 'qwen2': 'down_proj', 'gemma': 'down_proj',
                    'phi': 'fc2', 'opt': 'fc2'}


def test_ten_families():
    assert len(FAMILIES) == 10


@pytest.mark.parametrize('family', FAMILIES)
def test_adapter(family):
    m = tiny_model(family, n_layer=3) if family in ('gpt2', 'gptj') else tiny_model(family)
    a = detect_arch(m)
    n = m.config.num_hidden_layers
    assert a.num_layers == n
    assert a.rewrite_module_tmp.endswith('.' + EXPECTED_REWRITE[family])
    for i in range(n):
        for k in KINDS: get_module(m, layername(m, i, k))
    w = get_parameter(m, a.weight_name(n - 1))
    # the rewritten weight maps the MLP width to the model width, in the reported orientation
    expect = (a.mlp_width, a.hidden_size) if a.weight_orientation == 'in_out' else (a.hidden_size, a.mlp_width)
    assert tuple(w.shape) == expect
    assert (a.weight_orientation == 'in_out') == (family == 'gpt2')
    # the MLP output feeds the residual stream: its last dim is the model width, and the down-projection's
    # input (the keys ROME uses) has the MLP width
    ids = torch.tensor([[1, 2, 3]])
    with TraceDict(m, [layername(m, 0, 'mlp'), layername(m, 0, 'down_proj'), layername(m, 0)], retain_input=True) as td:
        m(ids)
    assert untuple(td[layername(m, 0, 'mlp')].output).shape[-1] == a.hidden_size
    assert td[layername(m, 0, 'down_proj')].input.shape[-1] == a.mlp_width
    assert untuple(td[layername(m, 0)].output).shape == (1, 3, a.hidden_size)


def test_arch_kept_on_model_and_copies():
    m = tiny_model('llama')
    assert model_arch(m) is model_arch(m)
    assert model_arch(copy.deepcopy(m)) == model_arch(m)


def test_unrecognised_structure_explains_fix():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(4, 4), torch.nn.Linear(4, 4)
        def get_input_embeddings(self): return self.emb
        def get_output_embeddings(self): return self.out
    with pytest.raises(ArchitectureError) as e: detect_arch(Odd())
    msg = str(e.value)
    assert 'layer_module_tmp' in msg and 'rewrite_module_tmp' in msg and 'ln_f_module' in msg
    assert isinstance(e.value, ValueError)


def test_explicit_templates_and_bad_names():
    m = tiny_model('gpt2')
    a = set_arch(m, rewrite_module_tmp='transformer.h.{}.mlp.c_fc')
    assert a.mlp_width == m.config.n_embd and model_arch(m) is a
    with pytest.raises(ValueError, match='transformer.h.0.nope'): set_arch(m, attn_module_tmp='transformer.h.{}.nope')
    with pytest.raises(ValueError, match='close matches'): get_module(m, 'transformer.h.0.mpl')


@pytest.fixture(scope='module', params=['bytelevel', 'metaspace'])
def tok(request):
    return tiny_tokenizer(request.param)


CASES = [  # prompt, subject, occurrence
    ('The Eiffel Tower is located in the city of', 'Eiffel Tower', 0),
    ('Paris is the capital of', 'Paris', 0),                       # at the very start
    ('The capital of France is Paris', 'Paris', 0),                # at the very end
    ("Danielle Darrieux's mother tongue is", 'Danielle Darrieux', 0),  # before punctuation
    ('Paris, Paris, Paris.', 'Paris', 0),                         # repeated: first
    ('Paris, Paris, Paris.', 'Paris', -1),                        # repeated: last
    ('Paris, Paris, Paris.', 'Paris', 1),                         # repeated: second
    ('Toko Yasuda plays the', 'Toko Yasuda', 0),
]


@pytest.mark.parametrize('prompt,subject,occ', CASES)
def test_find_token_range(tok, prompt, subject, occ):
    ids = tok.encode(prompt)
    s, e = find_token_range(tok, ids, subject, occurrence=occ)
    assert 0 <= s < e <= len(ids)
    txt = tok.decode(ids[s:e])
    assert subject in txt                                  # covers the subject
    assert subject not in tok.decode(ids[s + 1:e])         # and is the smallest such range
    assert subject not in tok.decode(ids[s:e - 1])
    # the right occurrence: as many whole occurrences before the range as asked for
    total = tok.decode(ids).count(subject)
    assert tok.decode(ids[:s]).count(subject) == (occ if occ >= 0 else total + occ)


def test_find_token_range_tensor_and_errors(tok):
    ids = torch.tensor(tok.encode('The Eiffel Tower is in'))
    assert find_token_range(tok, ids, 'Eiffel Tower') == find_token_range(tok, ids.tolist(), 'Eiffel Tower')
    with pytest.raises(ValueError, match='not in the prompt'): find_token_range(tok, ids, 'Louvre')
    with pytest.raises(ValueError, match='empty'): find_token_range(tok, ids, '')
    with pytest.raises(ValueError, match='occurs 1 times'): find_token_range(tok, ids, 'Tower', occurrence=3)


def test_make_inputs_padding_and_errors(tok):
    inp = make_inputs(tok, ['The Eiffel Tower is in', 'Paris'])
    assert inp['input_ids'].shape == inp['attention_mask'].shape == inp['position_ids'].shape
    assert inp['attention_mask'][:, -1].all()                   # left padding: last column is real everywhere
    r = make_inputs(tok, ['The Eiffel Tower is in', 'Paris'], padding_side='right')
    assert r['attention_mask'][:, 0].all()
    with pytest.raises(ValueError, match='empty'): make_inputs(tok, [''])
    with pytest.raises(ValueError, match='list'): make_inputs(tok, 'Paris')
    with pytest.raises(ValueError, match='padding_side'): make_inputs(tok, ['a'], padding_side='middle')


@pytest.mark.parametrize('family', ['gpt2', 'gpt_neo', 'llama', 'opt'])
def test_left_padding_matches_unpadded(family):
    tok = tiny_tokenizer()
    m = tiny_model(family)
    with torch.no_grad():
        alone = m(**make_inputs(tok, ['Paris'])).logits[0, -1]
        padded = m(**make_inputs(tok, ['The Eiffel Tower is located in', 'Paris'])).logits[1, -1]
    assert torch.allclose(alone, padded, atol=1e-4)


def test_model_and_tokenizer_roundtrip(tmp_path):
    tok = tiny_tokenizer()
    mt = ModelAndTokenizer(model=tiny_model('qwen2'), tokenizer=tok)
    assert mt.num_layers == 2 and mt.layer_names == ['model.layers.0', 'model.layers.1']
    mt.model.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    mt2 = ModelAndTokenizer(str(tmp_path), device='cpu')
    assert type(mt2.model).__name__ == 'Qwen2ForCausalLM'
    assert predict_token(mt, ['The Eiffel Tower is in']) == predict_token(mt2, ['The Eiffel Tower is in'])
    assert not mt2.model.training and not any(p.requires_grad for p in mt2.model.parameters())


@pytest.mark.parametrize('family', ['gpt2', 'gptj', 'gpt_neox', 'mistral', 'phi'])
def test_generate_greedy_equals_recompute(family):
    tok = tiny_tokenizer()
    m = tiny_model(family)
    prompt = 'The Eiffel Tower is in'
    fast = generate_fast(m, tok, [prompt, 'Paris'], top_k=1, max_out_len=len(tok.encode(prompt)) + 6)
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(m(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tok.eos_token_id: break
    assert fast[0] == tok.decode(ids).replace('<|endoftext|>', '')
    assert fast[1].startswith('Paris')


def test_trace_removes_hooks_on_error():
    m = tiny_model('gpt2')
    name = layername(m, 0, 'mlp')
    with pytest.raises(RuntimeError):
        with Trace(m, name, edit_output=lambda output: output * 0): raise RuntimeError('boom')
    assert len(get_module(m, name)._forward_hooks) == 0


@pytest.mark.parametrize('style,family', [('bytelevel', 'gpt2'), ('metaspace', 'llama')])
def test_target_logprobs_batched_equals_single(style, family):
    from rome_nb.models import target_logprobs, target_token_ids
    tok, m = tiny_tokenizer(style), tiny_model(family)
    prompts, targets = ['The Eiffel Tower is in', 'Paris is the capital of', 'Toko'], ['Paris', 'France and Italy', 'Yasuda plays']
    with torch.no_grad():
        batched = target_logprobs(m, tok, prompts, targets)
        for p, t, b in zip(prompts, targets, batched):
            pi, ti = target_token_ids(tok, p, t)
            assert tok.decode(ti).strip() == t
            single = torch.log_softmax(m(torch.tensor([pi + ti])).logits[0], -1)
            assert torch.allclose(b, torch.stack([single[len(pi) - 1 + j, x] for j, x in enumerate(ti)]), atol=1e-5)
    with pytest.raises(ValueError, match='empty target'): target_logprobs(m, tok, ['a'], [''])
