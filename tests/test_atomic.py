"""An edit happens completely or not at all, for every method (ROME, MEMIT, FT, FT-L, KN, MEND, KE) in fp32 and fp16:
a non-finite or overflowing update, checked in the weight's dtype, is refused before any weight is written, and a
failure part-way through a multi-request edit puts back every weight written so far, bit for bit."""
import pytest
import torch
from _editors import REQ, REQ2, snapshot, same, gpt2, rome_hp, memit_hp, mend_hp, ke_hp  # REQ: a valid request
from rome_nb.nethook import get_parameter
from rome_nb import rome as R, memit as M
from rome_nb.baselines import ft as FT, kn as KN, mend as MEND, ke as KE

torch.set_num_threads(1)
DTYPES = [torch.float32, torch.float16]
# a value that is an inf once cast to fp16, and a finite fp32 value whose row sums (two or more entries) overflow fp32
HUGE = {torch.float16: 1e5, torch.float32: 2.4e38}


# --- ROME: RomeEdit.apply / apply_deltas of a two-layer edit whose second vector is bad

@pytest.mark.parametrize('dtype', DTYPES)
def test_rome_edit_apply_two_layers_bad_second_writes_nothing(dtype):
    model = gpt2(dtype)
    snap = snapshot(model)
    w1, w2 = 'transformer.h.1.mlp.c_proj.weight', 'transformer.h.2.mlp.c_proj.weight'
    u, v = torch.ones(128), torch.full((32,), 1e-3)
    for bad_v in (torch.full((32,), float('inf')), torch.full((32,), HUGE[dtype])):
        edit = R.RomeEdit(REQ, {w1: (u, v), w2: (u, bad_v)}, {}, None, [1, 2])
        with pytest.raises(FloatingPointError): edit.apply(model)
        assert same(model, snap)
        wc = {}
        with pytest.raises(FloatingPointError): R.apply_deltas(model, {w1: (u, v), w2: (u, bad_v)}, wc)
        assert same(model, snap) and wc == {}
    orig = R.RomeEdit(REQ, {w1: (u, v), w2: (u, v)}, {}, None, [1, 2]).apply(model)  # a good one goes in
    assert set(orig) == {w1, w2} and not same(model, snap)


@pytest.mark.parametrize('dtype', DTYPES)
def test_rome_failure_in_second_request_restores_first(dtype, tok, sd, monkeypatch):
    model = gpt2(dtype)
    snap = snapshot(model)
    real, calls = R.compute_v, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt  # even an interrupt part-way leaves nothing behind
        return real(*a, **k)
    monkeypatch.setattr(R, 'compute_v', flaky)
    with pytest.raises(KeyboardInterrupt): R.apply_rome_to_model(model, tok, [REQ, REQ2], rome_hp(sd))
    assert len(calls) == 2 and same(model, snap)


def test_rome_fp16_overflowing_update_refused(tok, sd, monkeypatch):
    "max |v| = 1e5 and |u| = 1: a column of u v^T sums to at least 1e5 > 65504 (the fp16 maximum)."
    model = gpt2(torch.float16)
    snap = snapshot(model)
    real = R.compute_v
    def big(*a, **k):
        v = real(*a, **k)
        return v / v.abs().max() * 1e5
    monkeypatch.setattr(R, 'compute_v', big)
    with pytest.raises(FloatingPointError): R.apply_rome_to_model(model, tok, [REQ], rome_hp(sd))
    assert same(model, snap)


# --- MEMIT

@pytest.mark.parametrize('dtype', DTYPES)
def test_memit_overflow_in_last_layer_writes_nothing(dtype, tok, sd, monkeypatch):
    model = gpt2(dtype)
    snap = snapshot(model)
    real, n = M.memit_update, []
    def huge_last(adj_k, resid, w, o=None):
        n.append(1)
        up = real(adj_k, resid, w, o)
        return up if len(n) % 2 else torch.full(up.shape, HUGE[w.dtype])  # the second layer's update overflows
    monkeypatch.setattr(M, 'memit_update', huge_last)
    with pytest.raises(FloatingPointError): M.apply_memit_to_model(model, tok, [REQ, REQ2], memit_hp(sd))
    assert same(model, snap)


@pytest.mark.parametrize('dtype', DTYPES)
def test_memit_apply_failure_after_first_layer_restores(dtype, tok, sd, monkeypatch):
    model = gpt2(dtype)
    snap = snapshot(model)
    real = M.execute_memit
    def deltas_then_bad(*a, **k):
        d = real(*a, **k)
        last = list(d)[-1]
        d[last] = (d[last][0], d[last][1] * float('nan'))
        return d
    monkeypatch.setattr(M, 'execute_memit', deltas_then_bad)
    with pytest.raises(FloatingPointError): M.apply_memit_to_model(model, tok, [REQ, REQ2], memit_hp(sd))
    assert same(model, snap)


# --- FT and FT-L

@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('constr', [False, 1e30])
def test_ft_non_finite_or_overflowing_weights_restored(dtype, constr, tok):
    model = gpt2(dtype)
    snap = snapshot(model)
    lr = 1e37 if dtype == torch.float32 else 1e5  # Adam moves each weight by about lr per step
    hp = FT.FTHyperParams(layers=[1], lr=lr, num_steps=4, norm_constraint=constr)
    with pytest.raises(FloatingPointError): FT.apply_ft_to_model(model, tok, [REQ], hp)
    assert same(model, snap)


# --- KN

@pytest.mark.parametrize('dtype', DTYPES)
def test_kn_huge_direction_refused_in_weight_dtype(dtype, tok, monkeypatch):
    "A direction of 1e5 is an inf in fp16; one of 2.4e38 is finite in fp32 but its rows overflow: both refused."
    model = gpt2(dtype)
    snap = snapshot(model)
    monkeypatch.setattr(KN, 'kn_direction', lambda *a, **k: torch.full((32,), HUGE[dtype]))
    hp = KN.KNHyperParams(steps=2, batch_size=4, adaptive_threshold=0.5)
    with pytest.raises(FloatingPointError): KN.apply_kn_to_model(model, tok, [REQ], hp)
    assert same(model, snap)


@pytest.mark.parametrize('dtype', DTYPES)
def test_kn_infinite_scale_refused(dtype, tok):
    model = gpt2(dtype)
    snap = snapshot(model)
    hp = KN.KNHyperParams(steps=2, batch_size=4, adaptive_threshold=0.5)
    hp.lr_scale = float('inf')  # past the constructor's check, as a user could
    with pytest.raises(FloatingPointError): KN.apply_kn_to_model(model, tok, [REQ], hp)
    assert same(model, snap)


@pytest.mark.parametrize('dtype', DTYPES)
def test_kn_failure_in_second_request_restores_first(dtype, tok, monkeypatch):
    model = gpt2(dtype)
    snap = snapshot(model)
    real, calls = KN.kn_direction, []
    def flaky(*a, **k):
        calls.append(1)
        d = real(*a, **k)
        return d if len(calls) == 1 else d * float('nan')
    monkeypatch.setattr(KN, 'kn_direction', flaky)
    hp = KN.KNHyperParams(steps=2, batch_size=4, adaptive_threshold=0.5)
    with pytest.raises(FloatingPointError): KN.apply_kn_to_model(model, tok, [REQ, REQ2], hp)
    assert len(calls) == 2 and same(model, snap)


# --- MEND and KE

def _editor_case(name, editor_files, train_file, tmp_path, **kw):
    hp = (mend_hp if name == 'MEND' else ke_hp)(train_file, tmp_path, editor_path=editor_files[name], **kw)
    return (MEND.apply_mend_to_model if name == 'MEND' else KE.apply_ke_to_model), hp


@pytest.mark.parametrize('name', ['MEND', 'KE'])
@pytest.mark.parametrize('dtype', DTYPES)
def test_editor_huge_changes_refused_in_weight_dtype(name, dtype, editor_files, train_file, tmp_path, tok, monkeypatch):
    "Changes of 1e5 (an inf in fp16) or 2.4e38 (finite in fp32, rows overflow) for every edited weight: refused."
    model = gpt2(dtype)
    snap = snapshot(model)
    apply, hp = _editor_case(name, editor_files, train_file, tmp_path)
    cls = MEND.MENDEditor if name == 'MEND' else KE.KEEditor
    def huge(self, m, tok, request, lr_scale=1.0):
        return {n + '.weight': torch.full(get_parameter(m, n + '.weight').shape, HUGE[dtype]) for n in self.names}
    monkeypatch.setattr(cls, 'edit_deltas', huge)
    with pytest.raises(FloatingPointError): apply(model, tok, [REQ], hp, progress=False)
    assert same(model, snap)


@pytest.mark.parametrize('name', ['MEND', 'KE'])
@pytest.mark.parametrize('dtype', DTYPES)
def test_editor_infinite_scale_refused(name, dtype, editor_files, train_file, tmp_path, tok):
    model = gpt2(dtype)
    snap = snapshot(model)
    apply, hp = _editor_case(name, editor_files, train_file, tmp_path)
    hp.lr_scale = float('inf')  # past the constructor's check
    with pytest.raises(FloatingPointError): apply(model, tok, [REQ], hp, progress=False)
    assert same(model, snap)


@pytest.mark.parametrize('name', ['MEND', 'KE'])
@pytest.mark.parametrize('dtype', DTYPES)
def test_editor_good_then_bad_request_leaves_model(name, dtype, editor_files, train_file, tmp_path, tok):
    model = gpt2(dtype)
    snap = snapshot(model)
    apply, hp = _editor_case(name, editor_files, train_file, tmp_path)
    for bad in [{**REQ2, 'prompt': 'no slot'}, {**REQ2, 'subject': 123}, {'prompt': '{} x'}]:
        with pytest.raises(ValueError): apply(model, tok, [REQ, bad], hp, progress=False)
        assert same(model, snap)
    _, orig = apply(model, tok, [REQ, REQ2], hp, progress=False, return_orig_weights=True)
    assert orig and not same(model, snap)


@pytest.mark.parametrize('name', ['MEND', 'KE'])
@pytest.mark.parametrize('dtype', DTYPES)
def test_editor_failure_in_second_request_restores_first(name, dtype, editor_files, train_file, tmp_path, tok,
                                                         monkeypatch):
    model = gpt2(dtype)
    snap = snapshot(model)
    apply, hp = _editor_case(name, editor_files, train_file, tmp_path)
    real, calls = MEND.add_to_weights, []
    def flaky(m, deltas, *a, **k):
        calls.append(1)
        if len(calls) == 2: deltas = {n: d * float('inf') for n, d in deltas.items()}
        return real(m, deltas, *a, **k)
    monkeypatch.setattr(MEND, 'add_to_weights', flaky)
    with pytest.raises(FloatingPointError): apply(model, tok, [REQ, REQ2], hp, progress=False)
    assert len(calls) == 2 and same(model, snap)


# --- the shared core

def test_write_weights_checks_all_before_writing_any():
    from rome_nb.editing import write_weights, add_to_weights, all_or_nothing, check_weight_values
    model = gpt2()
    snap = snapshot(model)
    a, b = 'transformer.h.0.mlp.c_proj.weight', 'transformer.h.3.mlp.c_proj.weight'
    with pytest.raises(FloatingPointError, match='h.3'):
        write_weights(model, {a: snap[a] * 2, b: torch.full_like(snap[b], 2.4e38)}, {})
    with pytest.raises(ValueError, match='shape'): add_to_weights(model, {a: snap[a] * 2, b: snap[b][:2]})
    assert same(model, snap)
    with pytest.raises(FloatingPointError, match='overflow torch.float16'):
        check_weight_values('x', torch.full((2, 4), 2e4), torch.float16)
    orig = {}
    with pytest.raises(RuntimeError):
        with all_or_nothing(model, orig) as j:
            add_to_weights(model, {a: torch.ones_like(snap[a])}, j)
            raise RuntimeError('interrupted')
    assert same(model, snap) and orig == {}
