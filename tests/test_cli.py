"The command-line entry points run from plain Python, as a user would call them."
import subprocess, sys


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = run('-m', 'rome_nb.demo', '--quiet', '--n_cases', '2', '--out_dir', d)
        assert r.returncode == 0, r.stderr
        from pathlib import Path
        assert (Path(d) / 'trace.png').exists() and list(Path(d).glob('results/ROME/run_000/case_*.json'))
    for want in ('top-1 recall', 'Causal tracing of', 'weights restored bit for bit: True', 'ROME on cf (toy)', 'transformer.h.0.mlp.c_proj.weight'):
        assert want in r.stdout, (want, r.stdout)
