"The command-line entry points run from plain Python, as a user would call them."
import subprocess, sys


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs():
    r = run('-c', 'from rome_nb.demo import main; main(["--quiet"])')
    assert r.returncode == 0, r.stderr
    assert 'transformer.h.0.mlp.c_proj.weight' in r.stdout
