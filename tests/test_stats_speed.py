"The running sums are added in place (no new [d, d] matrix per batch) with the same bits as before, and never alias the caller's tensors."
import torch
from rome_nb import stats as S


def test_in_place_sum_same_bits():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(50, 16, generator=g) for _ in range(5)]
    s = S.SecondMoment()
    for x in xs: s.add(x, torch.float64)
    ref = None
    for x in xs:
        m = (x.double().T @ x.double()).double()
        ref = m if ref is None else ref + m
    assert torch.equal(s.mom2, ref)
    assert s.count == 250


def test_no_alias_of_first_batch():
    s = S.SecondMoment()
    x = torch.ones(3, 2, dtype=torch.float64)
    s._acc('mom2', x)
    s._acc('mom2', x)
    assert torch.equal(x, torch.ones(3, 2, dtype=torch.float64))  # the caller's tensor is untouched
