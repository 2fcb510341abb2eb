"The metrics equal the reference's definitions, computed one prompt at a time."
import math
import pytest
import torch
import rome_nb.metrics as M
from rome_nb.models import tiny_model, tiny_tokenizer
import standin_alg


@pytest.fixture(scope='module')
def mt():
    tok = tiny_tokenizer(); tok.pad_token = tok.eos_token
    return tiny_model('gpt2', n_layer=2, n_embd=32), tok


def ref_nll(model, tok, prefix, target):
    p, t = tok.encode(prefix), tok.encode(' ' + target)
    with torch.no_grad(): logp = torch.log_softmax(model(torch.tensor([p + t])).logits[0], -1)
    return -sum(logp[len(p) + j - 1, t[j]].item() for j in range(len(t))) / len(t)


def test_counterfact_nlls_match_reference(mt):
    model, tok = mt
    rec = standin_alg.make_record(3)
    out = M.compute_rewrite_quality_counterfact(model, tok, rec)
    rw = rec['requested_rewrite']
    prompts = {'rewrite_prompts': [rw['prompt'].format(rw['subject'])], 'paraphrase_prompts': rec['paraphrase_prompts'],
               'neighborhood_prompts': rec['neighborhood_prompts'], 'attribute_prompts': rec['attribute_prompts']}
    for k, ps in prompts.items():
        assert len(out[f'{k}_probs']) == len(ps)
        for p, got in zip(ps, out[f'{k}_probs']):
            assert got['target_new'] == pytest.approx(ref_nll(model, tok, p, rw['target_new']['str']), abs=1e-4)
            assert got['target_true'] == pytest.approx(ref_nll(model, tok, p, rw['target_true']['str']), abs=1e-4)
    assert len(out['neighborhood_prompts_correct']) == len(rec['neighborhood_prompts'])


def test_one_forward_per_case(mt):
    model, tok = mt
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try: M.compute_rewrite_quality_counterfact(model, tok, standin_alg.make_record(0))
    finally: h.remove()
    assert len(calls) == 1


def test_generation_metrics(mt):
    model, tok = mt
    from rome_nb.dsets import AttributeSnippets, fit_tfidf_vectorizer
    snips = AttributeSnippets.from_list(standin_alg.snippets()); vec = fit_tfidf_vectorizer(snips.texts())
    out = M.compute_rewrite_quality_counterfact(model, tok, standin_alg.make_record(0), snips, vec, seed=1, max_out_len=16)
    assert len(out['text']) == 2 and 0 <= out['reference_score'] <= 1 and out['ngram_entropy'] >= 0
    words = ' '.join(f'x{i}' for i in range(10))
    assert M.compute_n_gram_entropy(words) == pytest.approx((2 / 3 * math.log2(9) + 4 / 3 * math.log2(8)) / 2)
    assert M.word_tokenize("Isn't it 3.5 km?") == ['Is', "n't", 'it', '3.5', 'km', '?']


def test_zsre_accuracy_matches_reference(mt):
    model, tok = mt
    from rome_nb.dsets import zsre_record
    r = zsre_record({'subject': 'Toko Yasuda', 'src': 'What does Toko Yasuda play?', 'answers': ['the guitar'],
                     'rephrase': 'Which instrument does Toko Yasuda play?', 'loc': 'nq question: who plays soccer', 'loc_ans': 'Megan Rapinoe'}, 0, tok)
    out = M.compute_rewrite_quality_zsre(model, tok, r)
    def ref(prompt, ids):
        res = []
        for j, t in enumerate(ids):
            x = tok.encode(prompt + tok.decode(ids[:j]))
            with torch.no_grad(): res.append(model(torch.tensor([x])).logits[0, -1].argmax().item() == t)
        return res
    tgt = tok.encode(' the guitar')
    assert out['rewrite_prompts_correct'] == ref('What does Toko Yasuda play?', tgt)
    assert out['paraphrase_prompts_correct'] == ref('Which instrument does Toko Yasuda play?', tgt)
    assert out['neighborhood_prompts_correct'] == ref('nq question: who plays soccer?', tok.encode(' Megan Rapinoe'))
