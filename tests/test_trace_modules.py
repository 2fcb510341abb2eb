"""Causal tracing in rooms: every name `rome_nb.tracing` exported before the split still imports from it, the rooms
import only earlier rooms (and public names), and each computation has one way to call it."""
import ast, importlib
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ['trace_reference', 'trace_engine', 'trace_plots', 'tracing', 'tracing_averaged']  # in notebook order
BEFORE_SPLIT = ['collect_embedding_std', 'EmbeddingGaussian', 'collect_embedding_gaussian', 'EmbeddingStudentT',
                'collect_embedding_tdist', 'resolve_noise', 'corrupt_embeddings', 'TokenSequence', 'answer_probs',
                'trace_with_patch', 'layer_window', 'trace_important_states', 'trace_important_window',
                'EngineUnsupported', 'record_run', 'TraceEngine', 'Restoration', 'guess_subject', 'calculate_all_flows',
                'calculate_hidden_flow', 'plot_trace_heatmap', 'plot_hidden_flow', 'plot_all_flow', 'plot_flows',
                'trace_with_repatch', 'calculate_severed', 'plot_severed', 'known_facts', 'save_trace', 'load_trace',
                'trace_knowns', 'benchmark_tracing', 'trace_explorer', 'load_model_and_knowns', 'main', 'make_inputs',
                'find_token_range', 'decode_tokens', 'predict_from_input', 'layername', 'KnownsDataset']


def test_tracing_still_exports_every_name():
    import rome_nb.tracing as t
    assert [n for n in BEFORE_SPLIT if n not in t.__all__] == []
    ns = {}
    exec('from rome_nb.tracing import *', ns)
    assert [n for n in BEFORE_SPLIT if n not in ns] == []
    # the private names other tests and tools use stay where they were
    assert callable(t._cached_traces) and callable(t._check_run_params)


def test_moved_names_are_the_same_objects():
    import rome_nb.tracing as t, rome_nb.trace_reference as r, rome_nb.trace_engine as e, rome_nb.trace_plots as p
    assert t.TraceEngine is e.TraceEngine and t.trace_with_patch is r.trace_with_patch
    assert t.plot_flows is p.plot_flows and t.plot_trace_heatmap is p.plot_trace_heatmap


def _imports(mod):
    tree = ast.parse((ROOT / 'rome_nb' / f'{mod}.py').read_text())
    return [(n.module.split('.')[-1], a.name) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or '').startswith(('rome_nb', '.')) for a in n.names]


@pytest.mark.parametrize('mod', ROOMS)
def test_rooms_import_only_earlier_rooms_and_public_names(mod):
    for src, name in _imports(mod):
        assert not name.startswith('_'), f"{mod} imports the private {src}.{name}"
        if src in ROOMS: assert ROOMS.index(src) < ROOMS.index(mod), f"{mod} imports from the later {src}"


def test_one_way_to_trace_a_grid():
    "The reference-named functions are the reference path; the engine has `trace_grids`, not methods of those names."
    from rome_nb.trace_engine import TraceEngine
    assert not hasattr(TraceEngine, 'trace_important_states') and not hasattr(TraceEngine, 'trace_important_window')


def test_engine_methods_are_short():
    "The engine is built in steps of short methods (no method over 40 lines)."
    tree = ast.parse((ROOT / 'rome_nb' / 'trace_engine.py').read_text())
    long = [f"{n.name} {n.end_lineno - n.lineno + 1}" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40]
    assert long == []


def test_console_script_points_at_tracing_main():
    ini = (ROOT / 'settings.ini').read_text()
    assert 'rome_nb_trace=rome_nb.tracing:main' in ini
    assert callable(importlib.import_module('rome_nb.tracing').main)
