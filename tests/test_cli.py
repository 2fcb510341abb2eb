"The command-line entry points run from plain Python, as a user would call them."
import subprocess, sys


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = run('-m', 'rome_nb.quickstart', '--quiet', '--n_cases', '2', '--out_dir', d)
        assert r.returncode == 0, r.stderr
        from pathlib import Path
        assert (Path(d) / 'trace.png').exists() and list(Path(d).glob('results/ROME/run_000/case_*.json'))
    for want in ('top-1 recall', 'Causal tracing of', 'weights restored bit for bit: True', 'ROME on cf (toy)', 'transformer.h.0.mlp.c_proj.weight'):
        assert want in r.stdout, (want, r.stdout)


def _fake_trace(subject_row):
    "An MLP trace of 3 tokens x 3 layers: corrupted 0.1, clean 0.9; token 1 ends the subject; token 2 layer 2 restores half."
    import torch
    scores = torch.full((3, 3), 0.1)
    scores[1] = torch.tensor(subject_row)
    scores[2, 2] = 0.5
    return {'mlp': dict(scores=scores, low_score=0.1, high_score=0.9, subject_range=(0, 2), input_tokens=['A', 'b', ' is'])}


def test_demo_says_what_the_mlp_trace_shows():
    "A blank last-subject-token row has no peak (it used to be reported as 'peaks at layer <argmax of noise>')."
    from rome_nb.quickstart import mlp_trace_summary, mlp_trace_sentence
    s = mlp_trace_summary(_fake_trace([0.1, 0.1, 0.1]))
    assert s['subject_layer'] is None and (s['token'], s['layer']) == (' is', 2)
    text = mlp_trace_sentence(s, [0])
    assert 'blank' in text and 'peaks' not in text and 'ROME edits layer 0' in text
    s = mlp_trace_summary(_fake_trace([0.1, 0.1, 0.7]))
    assert s['subject_layer'] == 2 and 'peaks at layer 2 (75%). ROME edits layer 2.' in mlp_trace_sentence(s, [2])


def test_recall_table_progress_bar(capsys):
    "The demo's recall table shows a progress bar when asked (it was ~22 s of silence)."
    import dataclasses
    from rome_nb.toyworld import load_toy, recall_table
    mt, world = load_toy()
    small = dataclasses.replace(world, relations=world.relations[:1])
    tab, _ = recall_table(mt, small, progress=True)
    assert 'recall of every fact' in capsys.readouterr().err and len(tab) == 2
