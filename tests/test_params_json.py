"A run given a hyperparameters object writes params.json as the class saves itself (no empty `source`)."
import json
from rome_nb.editing import hparams_path
from rome_nb.evaluate import evaluate
from rome_nb.rome import ROMEHyperParams


def test_params_json_of_an_object(tmp_path):
    hp = ROMEHyperParams.from_json(hparams_path('ROME', 'toy'))
    run = evaluate('ROME', 'toy', hparams=hp, dataset_size_limit=1, skip_generation_tests=True,
                   results_dir=tmp_path, quiet=True)
    saved = json.loads((run / 'params.json').read_text())
    assert 'source' not in saved and saved == hp.to_dict()
    assert ROMEHyperParams.from_dict(saved) == hp
