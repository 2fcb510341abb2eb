"""A stand-in editing method and a small on-disk benchmark for testing the evaluation harness without ROME.

Importing this module registers the method as ALG_DICT["STEP"]. `make_bench(dir, n)` writes a tiny GPT-2 and its
tokenizer, CounterFact-format records, attribute snippets, TF-IDF statistics and a hyperparameter file, as a user's
data directory would hold them. `cli.py` in that directory runs `rome_nb.evaluate.main` as a script (the CLI).
"""
import dataclasses, json
from pathlib import Path
import torch
from rome_nb.models import tiny_model, tiny_tokenizer, layername, target_logprobs
from rome_nb.nethook import get_parameter
from rome_nb.dsets import AttributeSnippets, fit_tfidf_vectorizer, save_tfidf_stats
from rome_nb.evaluate import ALG_DICT


@dataclasses.dataclass
class StepHyperParams:
    layer: int = 3
    steps: int = 20
    lr: float = 0.05

    @classmethod
    def from_json(cls, path): return cls(**json.loads(Path(path).read_text()))


def apply_step_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False, **kwargs):
    "A few Adam steps on one down-projection weight that lower the NLL of each request's new object."
    name = layername(model, hparams.layer, 'down_proj') + '.weight'
    w = get_parameter(model, name)
    orig = {name: w.detach().clone()}
    prompts = [r['prompt'].format(r['subject']) for r in requests]
    targets = [r['target_new']['str'] for r in requests]
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=hparams.lr)
    for _ in range(hparams.steps):
        loss = -sum(lp.mean() for lp in target_logprobs(model, tok, prompts, targets))
        opt.zero_grad(); loss.backward(); opt.step()
    w.requires_grad_(False)
    return model, (orig if return_orig_weights else {})


ALG_DICT["STEP"] = (StepHyperParams, apply_step_to_model)

SUBJECTS = ["LeBron James", "Megan Rapinoe", "Toko Yasuda", "Danielle Darrieux", "The Eiffel Tower"]
OBJECTS = ["football", "basketball", "soccer", "guitar", "piano", "French", "Paris", "Rome"]


def make_record(i):
    "A CounterFact-format record (all fields) about subjects and objects the tiny tokenizer knows."
    s, new, true = SUBJECTS[i % 5], OBJECTS[i % 8], OBJECTS[(i + 3) % 8]
    return {"case_id": i, "pararel_idx": i,
            "requested_rewrite": {"prompt": "{} plays the sport of" if i % 2 else "{} is located in the city of",
                                  "relation_id": "P641", "subject": s,
                                  "target_new": {"str": new, "id": "Q" + new}, "target_true": {"str": true, "id": "Q" + true}},
            "paraphrase_prompts": [f"It is well known. {s} plays", f"{s} is a professional"],
            "neighborhood_prompts": [f"{o} plays the sport of" for o in SUBJECTS if o != s][:3],
            "attribute_prompts": [f"{SUBJECTS[(i + 1) % 5]} plays the sport of"],
            "generation_prompts": [f"{s} is", f"{s} plays the"]}


def snippets():
    return [{"relation_id": "P641", "target_id": "Q" + o,
             "samples": [{"name": "Someone", "text": f"Someone is known for {o}, and plays {o} every day."}]} for o in OBJECTS]


CLI = "import standin_alg\nfrom rome_nb.evaluate import main\nmain()\n"


def make_bench(d, n=20):
    "Write model, data, hyperparameters and a CLI script into `d`; returns their paths."
    d = Path(d)
    model, tok = tiny_model('gpt2', n_layer=4, n_embd=64), tiny_tokenizer()
    model.save_pretrained(d / 'model'); tok.save_pretrained(d / 'model')
    (d / 'data').mkdir(parents=True, exist_ok=True)
    (d / 'data' / 'counterfact.json').write_text(json.dumps([make_record(i) for i in range(n)], indent=1))
    (d / 'data' / 'attribute_snippets.json').write_text(json.dumps(snippets()))
    save_tfidf_stats(fit_tfidf_vectorizer(AttributeSnippets.from_list(snippets()).texts()), d / 'data')
    (d / 'step.json').write_text(json.dumps(dataclasses.asdict(StepHyperParams())))
    (d / 'cli.py').write_text(CLI)
    return dict(model=d / 'model', data=d / 'data', hparams=d / 'step.json', cli=d / 'cli.py', results=d / 'results')
