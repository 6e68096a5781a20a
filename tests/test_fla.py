"""The optional fla (Triton) backend: selection rules on any machine; kernel parity on a CUDA GPU (marked `cuda`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from liger_lm import convert
from liger_lm.ops import BackendError, chunk_gla, gla, gla_value_decay, naive_recurrent_gla_value_decay, use_backend
from liger_lm.ops.fla_backend import fla_available, fla_selected, get_backend, set_backend

needs_fla = pytest.mark.skipif(not (torch.cuda.is_available() and fla_available()),
                               reason="needs a CUDA GPU and fla-core")


def test_cpu_tensors_never_select_fla():
    x = torch.zeros(1, 2, 1, 4)
    assert get_backend() == "auto"
    assert not fla_selected(x) and not fla_selected(x, "torch")


def test_forcing_fla_on_cpu_is_a_one_line_error():
    with pytest.raises(BackendError, match="CUDA") as err:
        gla(*(torch.zeros(1, 3, 1, 4) for _ in range(4)), backend="fla")
    assert "\n" not in str(err.value)


def test_unknown_backend_is_rejected_and_use_backend_restores():
    with pytest.raises(BackendError, match="auto, torch, fla"):
        set_backend("triton")
    with use_backend("torch"):
        assert get_backend() == "torch"
    assert get_backend() == "auto"


def _inputs(length, device, decay_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, length, 3, 8, generator=generator).softmax(-1) for _ in range(2))
    v = torch.randn(2, length, 3, 8, generator=generator)
    g = F.logsigmoid(torch.randn(2, length, 3, decay_dim, generator=generator)) / 4
    state = torch.randn(2, 3, 8, 8, generator=generator)
    return [t.to(device) for t in (q, k, v, g, state)]


@pytest.mark.cuda
@needs_fla
@pytest.mark.parametrize("length", [1, 5, 63, 64, 200])
def test_fla_gla_matches_torch_reference(length):
    q, k, v, g, state = _inputs(length, "cuda")
    o, s = gla(q, k, v, g, state, backend="fla")
    o_ref, s_ref = chunk_gla(q.cpu(), k.cpu(), v.cpu(), g.cpu(), state.cpu())
    torch.testing.assert_close(o.cpu(), o_ref, rtol=1e-3, atol=1e-3 * o_ref.abs().max().item())
    torch.testing.assert_close(s.cpu(), s_ref, rtol=1e-3, atol=1e-3 * s_ref.abs().max().item())


@pytest.mark.cuda
@needs_fla
@pytest.mark.parametrize("length", [1, 40])
def test_fla_value_decay_matches_torch_reference(length):
    q, k, v, g, state = _inputs(length, "cuda", decay_dim=8, seed=1)
    o, s = gla_value_decay(q, k, v, g, state, backend="fla")
    o_ref, s_ref = naive_recurrent_gla_value_decay(q.cpu(), k.cpu(), v.cpu(), g.cpu(), state.cpu())
    torch.testing.assert_close(o.cpu(), o_ref, rtol=1e-3, atol=1e-3 * o_ref.abs().max().item())
    torch.testing.assert_close(s.cpu(), s_ref, rtol=1e-3, atol=1e-3 * s_ref.abs().max().item())


@pytest.mark.cuda
@needs_fla
@pytest.mark.parametrize("gate", ["gla", "gsa"])
def test_converted_model_logits_fla_vs_torch_on_cuda(gate):
    model = convert(tiny_model("llama"), gate=gate, window=8).cuda()
    ids = torch.randint(3, 97, (2, 150), device="cuda")
    with torch.no_grad(), use_backend("torch"):
        reference = model(ids).logits
    with torch.no_grad(), use_backend("fla"):
        logits = model(ids).logits
    torch.testing.assert_close(logits, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())
