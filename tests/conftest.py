"Shared pytest setup: the `slow` marker (run with --runslow or RUN_SLOW=1), the shared data folder, editor training records and trained editors."
import json, os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the project (one level higher for a git worktree in a sibling folder)
SHARED_DATA = Path(os.environ.get('ROME_NB_SHARED_DATA') or next(
    (p for p in (ROOT.parent / 'shared' / 'data', ROOT.parent.parent / 'shared' / 'data') if p.is_dir()),
    ROOT.parent / 'shared' / 'data'))


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a long test (retraining, large runs); run with --runslow or RUN_SLOW=1')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow') or os.environ.get('RUN_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow: run with --runslow or RUN_SLOW=1')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    "Every test starts from seeded generators (torch, numpy, `random`): its draws do not depend on which tests ran before."
    import random
    import numpy as np
    import torch
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def shared_data():
    "The shared real-data folder (../shared/data from the project root); skips the test when it is absent."
    if not SHARED_DATA.is_dir(): pytest.skip(f'shared data not found at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture(scope='module')
def train_file(tmp_path_factory):
    "A CounterFact-format training file of 60 stand-in records (the learned editors' `train_ds`)."
    import standin_alg
    f = tmp_path_factory.mktemp('train') / 'train.json'
    f.write_text(json.dumps([standin_alg.make_record(i) for i in range(20, 80)]))
    return f


@pytest.fixture(scope='module')
def tok():
    "The tiny tokenizer (`rome_nb.models.tiny_tokenizer`), once per test file."
    from rome_nb.models import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture(scope='module')
def sd(tmp_path_factory):
    "A statistics folder shared by one test file's tests."
    return tmp_path_factory.mktemp('stats')


@pytest.fixture(scope='module')
def editor_files(tmp_path_factory, train_file, tok):
    "Small MEND and KE editors trained once on an fp32 model, saved as files (usable by an fp16 copy too)."
    from _editors import REQ, gpt2, mend_hp, ke_hp
    from rome_nb.baselines import mend, ke
    d = tmp_path_factory.mktemp('editors')
    out = {}
    for name, hp in (('MEND', mend_hp(train_file, d)), ('KE', ke_hp(train_file, d))):
        apply = mend.apply_mend_to_model if name == 'MEND' else ke.apply_ke_to_model
        apply(gpt2(), tok, [REQ], hp, copy=True, progress=False)
        out[name] = str(next(d.glob(f'{name.lower()}/*/editor.safetensors')))
    return out
