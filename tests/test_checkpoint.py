"""fp4core.pytorch.checkpoint: ModelOpt NVFP4 checkpoints into Fp4Linear.

The checkpoints are made here by a float64 quantizer that follows ModelOpt's recipe
(``NVFP4QTensor``: ``weight_scale_2 = amax / (6 * 448)``, block scales
``E4M3(block_amax / (6 * weight_scale_2))`` (1 for an all-zero block), codes the nearest E2M1
of ``w / (scale * weight_scale_2)`` with ties to even, packed element 2i in the low nibble),
written without fp4core's quantizer, saved with safetensors under ModelOpt's tensor names,
and loaded with ``load_modelopt_checkpoint``.
"""

from __future__ import annotations

import inspect
import logging
import sys

import pytest
import torch
from torch import nn

import fp4core
from fp4core.formats.layouts import unswizzle_scales
from fp4core.formats.reference import relative_error
from fp4core.pytorch import checkpoint
from fp4core.pytorch.checkpoint import fp4linear_from_modelopt, load_modelopt_checkpoint
from fp4core.pytorch.nn import Fp4Linear

try:
    import safetensors.torch as st
except ImportError:  # the [checkpoints] extra
    st = None

needs_safetensors = pytest.mark.skipif(st is None, reason="safetensors not installed (fp4core[checkpoints])")

_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
_TIES_UP = (0.75, 1.75, 3.5)  # midpoints whose lower neighbour has an odd code


def _has_activations_arg() -> bool:
    return "activations" in inspect.signature(Fp4Linear.__init__).parameters


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 code of float64 values, ties to the even code, saturating at 6."""
    mag = v.abs()
    code = torch.searchsorted(_MIDPOINTS, mag.contiguous())  # bounds < mag: a tie goes down
    for t in _TIES_UP:
        code = code + (mag == t).long()
    return (code | ((v < 0).long() << 3)).to(torch.uint8)


def modelopt_quantize(w: torch.Tensor):
    """ModelOpt's NVFP4 weight export in float64: (weight uint8 (N, K/2), weight_scale
    float8_e4m3fn (N, K/16) linear, weight_scale_2 float32 (1,)) and the float64 dequantization
    ``e2m1 * weight_scale * weight_scale_2``."""
    n, k = w.shape
    w64 = w.double()
    s2 = (w64.abs().max() / (6.0 * 448.0)).to(torch.float32).reshape(1)
    s2_64 = s2.double()
    blocks = w64.reshape(n, k // 16, 16)
    bscale = blocks.abs().amax(-1) / (6.0 * s2_64)
    bscale[bscale == 0] = 1.0
    sf = bscale.to(torch.float8_e4m3fn)
    sf64 = sf.double()
    codes = _e2m1_codes(blocks / (sf64 * s2_64).unsqueeze(-1)).reshape(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    vals = _E2M1[(codes & 7).long()] * torch.where(codes >= 8, -1.0, 1.0).double()
    deq = (vals.reshape(n, k // 16, 16) * (sf64 * s2_64).unsqueeze(-1)).reshape(n, k)
    return packed, sf, s2, deq


def test_reference_e2m1_rounding():
    """The test's own quantizer: ties to even, saturation, sign, low-nibble-first packing."""
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.74, -6.0, 0.2, 2.6], dtype=torch.float64)
    assert _e2m1_codes(v).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 8 | 1, 8 | 7, 0, 5]
    w = torch.zeros(1, 16)
    w[0, 0], w[0, 1] = 6.0, -0.5  # scale_2 = 6/2688, block scale 448: codes 7 and 9
    packed, sf, s2, deq = modelopt_quantize(w)
    assert packed[0, 0].item() == 0x97 and sf.view(torch.uint8)[0, 0].item() == 0x7E
    assert torch.allclose(deq, w.double(), rtol=1e-7, atol=0)


class Tiny(nn.Module):
    """LayerNorm, three NVFP4 linears (up and out with a bias), a float head left as it is."""

    def __init__(self, d0, d1, d2, d3):
        super().__init__()
        self.norm = nn.LayerNorm(d0)
        self.up = nn.Linear(d0, d1, bias=True)
        self.down = nn.Linear(d1, d2, bias=False)
        self.out = nn.Linear(d2, d3, bias=True)
        self.head = nn.Linear(d3, 8)

    def forward(self, x):
        h = self.norm(x)
        h = torch.relu(self.up(h))
        h = torch.relu(self.down(h))
        return self.head(self.out(h))


_FP4 = ("up", "down", "out")


def _weights(n, k, gen):
    """Random weights with rows of different magnitude (block scales across the E4M3 range)
    and one all-zero block (ModelOpt's scale 1.0)."""
    w = torch.randn(n, k, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    w[0, :16] = 0.0
    return w


def _make_checkpoint(d, seed=0):
    """A float Tiny, the ModelOpt-style state dict of its NVFP4 version and the references:
    (model, state dict, {name: float64 dequantized weight}, {name: float64 bias or None})."""
    gen = torch.Generator().manual_seed(seed)
    model = Tiny(*d)
    sd, deq, biases = {}, {}, {}
    x_cal = torch.randn(64, d[0], generator=gen)
    with torch.no_grad():  # the norm and the head keep float weights, with values of their own
        model.norm.weight.uniform_(0.5, 1.5, generator=gen)
        model.norm.bias.uniform_(-0.1, 0.1, generator=gen)
    norm_ref = {"norm.weight": model.norm.weight.detach().clone(), "norm.bias": model.norm.bias.detach().clone()}
    sd.update(norm_ref)
    h = nn.functional.layer_norm(x_cal, (d[0],), norm_ref["norm.weight"], norm_ref["norm.bias"]).double()
    for i, name in enumerate(_FP4):
        lin = getattr(model, name)
        w = _weights(lin.out_features, lin.in_features, gen)
        packed, sf, s2, dq = modelopt_quantize(w)
        # max calibration of the input (as ModelOpt's): input_scale = amax / (6 * 448)
        sd[f"{name}.input_scale"] = (h.abs().max() / (6.0 * 448.0)).to(torch.float32).reshape(())
        sd[f"{name}.weight"], sd[f"{name}.weight_scale"], sd[f"{name}.weight_scale_2"] = packed, sf, s2.reshape(())
        deq[name] = dq
        b = torch.randn(lin.out_features, generator=gen).to(torch.bfloat16) if lin.bias is not None else None
        if b is not None:
            sd[f"{name}.bias"] = b
        biases[name] = b
        h = h @ dq.t() + (b.double() if b is not None else 0)
        if name != "out":
            h = torch.relu(h)
    head_w = torch.randn(8, d[3], generator=gen) / d[3] ** 0.5
    sd["head.weight"], sd["head.bias"] = head_w, torch.zeros(8)
    with torch.no_grad():  # scramble what the checkpoint replaces, to see that it does
        for p in model.parameters():
            p.uniform_(-1, 1, generator=gen)
    return model, sd, deq, biases


def _quant_dequant(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """x as the static-scale W4A4 layer sees it: NVFP4 with global scale 1/input_scale, float64."""
    gs = (1.0 / input_scale.double()).to(torch.float32).reshape(1)
    a, asf = fp4core.nvfp4_quantize(x.float(), gs)
    return fp4core.dequantize(a, asf, gs, dtype=torch.float64)


DIMS = [(128, 1280, 2880, 64), (2880, 1280, 160, 2880), (272, 2880, 1280, 48)]


@needs_safetensors
@pytest.mark.parametrize("d", DIMS, ids=lambda d: "x".join(map(str, d)))
def test_load_safetensors_matches_modelopt_reference(d, tmp_path, caplog):
    model, sd, deq, biases = _make_checkpoint(d)
    path = tmp_path / "model.safetensors"
    st.save_file(sd, str(path))
    with caplog.at_level(logging.INFO, logger="fp4core"):
        replaced = load_modelopt_checkpoint(model, path, backend="torch")
    assert replaced == list(_FP4)
    assert any("replaced 3" in r.getMessage() for r in caplog.records)
    assert type(model.head) is nn.Linear and torch.equal(model.head.weight, sd["head.weight"])
    assert torch.equal(model.norm.weight, sd["norm.weight"]) and torch.equal(model.norm.bias, sd["norm.bias"])

    gen = torch.Generator().manual_seed(1)
    for name in _FP4:
        layer = getattr(model, name)
        assert isinstance(layer, Fp4Linear) and layer.act_scale == "static" and layer.backend == "torch"
        n, k = deq[name].shape
        assert (layer.out_features, layer.in_features) == (n, k)
        # (a) codes and block scales bit for bit; the dequantization exact up to the global part
        assert torch.equal(layer.weight_fp4, sd[f"{name}.weight"])
        assert torch.equal(unswizzle_scales(layer.weight_scale, n, k // 16), sd[f"{name}.weight_scale"].view(torch.uint8))
        s2 = sd[f"{name}.weight_scale_2"].double()
        block_part = fp4core.dequantize(layer.weight_fp4, layer.weight_scale, None, dtype=torch.float64)
        assert torch.equal(block_part * s2, deq[name])  # e2m1 * E4M3 scale: exact, then * scale_2
        wgs = layer.weight_global_scale
        assert wgs.dtype == torch.float32 and wgs.shape == (1,)
        assert torch.equal(wgs, (1.0 / s2).to(torch.float32).reshape(1))  # 1/weight_scale_2, rounded once
        # dividing by the float32 reciprocal instead of multiplying by scale_2: one float32 rounding
        full = block_part * (1.0 / wgs.double())
        assert torch.allclose(full, deq[name], rtol=2.0 ** -23, atol=0)
        assert torch.allclose(layer.dequantized_weight(torch.float64), deq[name], rtol=2.0 ** -23, atol=0)
        assert torch.equal(layer.input_global_scale,
                           (1.0 / sd[f"{name}.input_scale"].double()).to(torch.float32).reshape(1))
        if biases[name] is not None:
            assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer.bias, biases[name])
        else:
            assert layer.bias is None
        # (b) one layer against float64 W4A4: x quantized with the static input scale, the
        # reference weight, float64 products. The layer writes the GEMM's result in bf16 (round
        # to nearest: relative error <= 2^-8, observed up to 0.97 of it) after accumulating in
        # float32 and scaling by alpha = 1/(gs_x * gs_w) (error ~sqrt(K) * 2^-24 of sum |x||w|,
        # under 1e-5 of it for K <= 2880; the worst case K * 2^-24 is never approached), then
        # adds the bias in float32.
        x = torch.randn(8, k, generator=gen) * float(sd[f"{name}.input_scale"]) * 6 * 448 / 4
        with torch.no_grad():
            y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (8, n) and bool(torch.isfinite(y).all())
        xq = _quant_dequant(x, sd[f"{name}.input_scale"])
        ref = xq @ deq[name].t()
        bias = biases[name].double() if biases[name] is not None else torch.zeros(n, dtype=torch.float64)
        # + 2^-23 |ref + bias|: the float32 bias addition after the bf16 GEMM output
        bound = (2.0 ** -8 * ref.abs() + 1e-5 * (xq.abs() @ deq[name].abs().t())
                 + 2.0 ** -23 * (ref + bias).abs())
        assert bool(((y.double() - (ref + bias)).abs() <= bound).all())

    # (b) the whole model against a float64 chain of the same W4A4 computation. The chain rounds
    # each layer's output to bf16 as the layers do, but it accumulates in float64: a last-bit
    # difference can still move a hidden activation across an E2M1 rounding boundary in the
    # next layer, so the check is the project's FP4 tolerance, relative error <= 1e-2.
    x = torch.randn(4, 3, d[0], generator=gen)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (4, 3, 8) and bool(torch.isfinite(y).all())
    with torch.no_grad():
        h = nn.functional.layer_norm(x, (d[0],), sd["norm.weight"], sd["norm.bias"]).reshape(-1, d[0])
        for name in _FP4:
            h = _quant_dequant(h, sd[f"{name}.input_scale"]) @ deq[name].t()
            h = h.to(torch.bfloat16).double()
            if biases[name] is not None:
                h = h + biases[name].double()
            h = (torch.relu(h) if name != "out" else h).float()
        ref = h.double() @ sd["head.weight"].double().t() + sd["head.bias"].double()
    assert relative_error(y.reshape(-1, 8), ref) <= 1e-2


def test_load_state_dict_source_dynamic_and_own_bias():
    """A state dict as the source; no input_scale: dynamic activation scales; no bias in the
    checkpoint: the module's own bias is kept."""
    d = (128, 1280, 160, 48)
    model, sd, deq, _ = _make_checkpoint(d, seed=3)
    for name in _FP4:
        del sd[f"{name}.input_scale"]
    own_bias = model.out.bias.detach().clone()
    del sd["out.bias"]
    replaced = load_modelopt_checkpoint(model, sd, backend="torch")
    assert replaced == list(_FP4)
    assert all(getattr(model, n).act_scale == "dynamic" for n in _FP4)
    assert torch.equal(model.out.bias, own_bias) and model.out.bias.dtype == own_bias.dtype
    assert torch.allclose(model.up.dequantized_weight(torch.float64), deq["up"], rtol=2.0 ** -23, atol=0)
    y = model(torch.randn(5, d[0]))
    assert y.shape == (5, 8) and bool(torch.isfinite(y).all())


@needs_safetensors
def test_load_sharded_directory(tmp_path):
    model, sd, deq, _ = _make_checkpoint((128, 1280, 160, 48), seed=4)
    keys = sorted(sd)
    st.save_file({k: sd[k] for k in keys[::2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    st.save_file({k: sd[k] for k in keys[1::2]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    assert load_modelopt_checkpoint(model, tmp_path, backend="torch") == list(_FP4)
    assert torch.equal(model.down.weight_fp4, sd["down.weight"])


def test_fp4linear_from_modelopt_direct():
    gen = torch.Generator().manual_seed(5)
    w = _weights(48, 272, gen)
    packed, sf, s2, dq = modelopt_quantize(w)
    inp = torch.tensor(0.01)
    layer = fp4linear_from_modelopt(packed, sf.view(torch.uint8), s2, inp, backend="torch")  # uint8 scale bytes
    assert layer.act_scale == "static" and layer.bias is None and layer.in_features == 272
    assert torch.allclose(layer.dequantized_weight(torch.float64), dq, rtol=2.0 ** -23, atol=0)
    assert torch.equal(layer.input_global_scale, torch.tensor([100.0]).float())
    layer2 = fp4linear_from_modelopt(packed, sf, s2)
    assert layer2.act_scale == "dynamic" and torch.equal(layer2.weight_scale, layer.weight_scale)


# ---- errors ---------------------------------------------------------------------------------

def _one():
    gen = torch.Generator().manual_seed(6)
    packed, sf, s2, _ = modelopt_quantize(_weights(32, 64, gen))
    return packed, sf, s2


def test_errors_name_the_tensor():
    packed, sf, s2 = _one()
    with pytest.raises(ValueError, match=r"weight_scale: expected shape \(N, K/16\) = \(32, 4\).*got \(32, 8\)"):
        fp4linear_from_modelopt(packed, torch.cat([sf, sf], 1), s2)
    with pytest.raises(ValueError, match=r"weight_scale: expected float8_e4m3fn.*got dtype torch.float32"):
        fp4linear_from_modelopt(packed, sf.float(), s2)
    with pytest.raises(ValueError, match=r"weight: expected uint8.*got dtype torch.float16"):
        fp4linear_from_modelopt(packed.half(), sf, s2)
    with pytest.raises(ValueError, match=r"weight: K = 2 \* 4 = 8 is not a multiple"):
        fp4linear_from_modelopt(packed[:, :4], sf[:, :1], s2)
    with pytest.raises(ValueError, match=r"weight_scale_2: expected a scalar or shape \(1,\), got shape \(2,\)"):
        fp4linear_from_modelopt(packed, sf, s2.repeat(2))
    with pytest.raises(ValueError, match=r"input_scale: expected a positive finite value, got 0"):
        fp4linear_from_modelopt(packed, sf, s2, torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"bias: expected a floating \(N,\) = \(32,\) tensor"):
        fp4linear_from_modelopt(packed, sf, s2, bias=torch.zeros(31))
    with pytest.raises(ValueError, match=r"activations: expected one of"):
        fp4linear_from_modelopt(packed, sf, s2, activations="int8")
    nan_sf = sf.view(torch.uint8).clone()
    nan_sf[3, 1] = 0x7F
    with pytest.raises(ValueError, match=r"weight_scale: holds NaN"):
        fp4linear_from_modelopt(packed, nan_sf, s2)
    neg_sf = sf.view(torch.uint8).clone()
    neg_sf[2, 0] |= 0x80  # -scale: the kernels would lose or apply the sign, silently
    with pytest.raises(ValueError, match=r"weight_scale: holds negative block scales"):
        fp4linear_from_modelopt(packed, neg_sf, s2)


def _small():
    model, sd, _, _ = _make_checkpoint((128, 1280, 160, 48), seed=7)
    return model, sd


def test_loader_errors_name_the_checkpoint_key():
    model, sd = _small()
    sd["down.weight_scale"] = sd["down.weight_scale"][:, :-1]
    with pytest.raises(ValueError, match=r"down\.weight_scale: expected shape \(N, K/16\)"):
        load_modelopt_checkpoint(model, sd)
    assert type(model.up) is nn.Linear  # nothing replaced before the error

    model, sd = _small()
    sd["up.weight_scale_2"] = sd["up.weight_scale_2"].to(torch.int32)
    with pytest.raises(ValueError, match=r"up\.weight_scale_2: expected a float32/float16/bfloat16 scale"):
        load_modelopt_checkpoint(model, sd)

    model, sd = _small()
    model.down = nn.Linear(1280, 176, bias=False)
    with pytest.raises(ValueError, match=r"down\.weight: expected shape \(out_features, in_features/2\) = "
                                         r"\(176, 640\).*got \(160, 640\)"):
        load_modelopt_checkpoint(model, sd)


def test_missing_weight_scale_2():
    model, sd = _small()
    del sd["down.weight_scale_2"]
    with pytest.raises(RuntimeError, match=r"NVFP4 linears with missing parts: down \(missing down\.weight_scale_2\)"):
        load_modelopt_checkpoint(model, sd)
    assert type(model.up) is nn.Linear
    before = model.down.weight.detach().clone()
    assert load_modelopt_checkpoint(model, sd, strict=False) == ["up", "out"]
    # the incomplete layer is left alone: its uint8 codes are not copied into the float weight
    assert type(model.down) is nn.Linear and torch.equal(model.down.weight, before)


def test_unused_keys_strict():
    model, sd = _small()
    sd["up.pre_quant_scale"] = torch.ones(128)
    sd["lm_head.weight"] = torch.ones(3, 3)
    with pytest.raises(RuntimeError, match=r"source keys not used by the model: lm_head\.weight, up\.pre_quant_scale"):
        load_modelopt_checkpoint(model, sd)
    assert type(model.up) is nn.Linear
    assert load_modelopt_checkpoint(model, sd, strict=False) == list(_FP4)


def test_bf16_activations_unsupported(monkeypatch):
    class NoActivations(Fp4Linear):  # an Fp4Linear without the W4A16 argument
        def __init__(self, in_features, out_features, bias=True, format="nvfp4", backend="auto",
                     act_sf_layout="128x4", act_scale="dynamic", device=None, dtype=torch.bfloat16):
            super().__init__(in_features, out_features, bias, format, backend, act_sf_layout, act_scale,
                             device, dtype)

    monkeypatch.setattr(checkpoint, "Fp4Linear", NoActivations)
    packed, sf, s2 = _one()
    with pytest.raises(NotImplementedError, match=r"activations='bf16'.*no 'activations' argument"):
        fp4linear_from_modelopt(packed, sf, s2, activations="bf16")
    model, sd = _small()
    with pytest.raises(NotImplementedError, match=r"activations='bf16'"):
        load_modelopt_checkpoint(model, sd, activations="bf16")
    assert type(model.up) is nn.Linear
    assert isinstance(fp4linear_from_modelopt(packed, sf, s2), NoActivations)  # "fp4" still works


def test_activations_passed_to_fp4linear_when_supported(monkeypatch):
    """With an Fp4Linear that takes ``activations``, the loader passes it (and, for "bf16",
    leaves the activation scale dynamic: a W4A16 layer does not quantize its input)."""
    seen = []

    class WithActivations(Fp4Linear):
        def __init__(self, *args, activations="fp4", **kwargs):
            seen.append(activations)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "Fp4Linear", WithActivations)
    packed, sf, s2 = _one()
    layer = fp4linear_from_modelopt(packed, sf, s2, torch.tensor(0.5), activations="bf16")
    assert seen == ["bf16"] and layer.act_scale == "dynamic"
    model, sd = _small()
    assert load_modelopt_checkpoint(model, sd) == list(_FP4)
    assert seen == ["bf16", "fp4", "fp4", "fp4"] and model.up.act_scale == "static"


def test_missing_safetensors_message(monkeypatch, tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install safetensors.*fp4core\[checkpoints\]"):
        load_modelopt_checkpoint(Tiny(128, 1280, 160, 48), path)
    with pytest.raises(FileNotFoundError, match="source: no such file"):
        load_modelopt_checkpoint(Tiny(128, 1280, 160, 48), tmp_path / "nope.safetensors")


@pytest.mark.skipif(not _has_activations_arg(),
                    reason="this Fp4Linear has no activations argument (weight-only W4A16 layers)")
def test_w4a16_bf16_activations():
    d = (128, 1280, 2880, 64)
    model, sd, deq, biases = _make_checkpoint(d, seed=8)
    assert load_modelopt_checkpoint(model, sd, activations="bf16", backend="torch") == list(_FP4)
    gen = torch.Generator().manual_seed(9)
    for name in _FP4:
        layer = getattr(model, name)
        x = torch.randn(6, layer.in_features, generator=gen).to(torch.bfloat16)
        y = layer(x)
        assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
        ref = x.double() @ deq[name].t() + (biases[name].double() if biases[name] is not None else 0)
        # the input is not quantized: only bf16 output rounding and float32 accumulation remain
        assert relative_error(y, ref) <= 1e-2


def test_a_mis_shaped_tensor_beside_the_linears_leaves_the_model_as_it_was():
    """The shapes of the non-FP4 tensors are checked before any nn.Linear is swapped: a bad
    one used to raise from load_state_dict after the model had been changed."""
    model, sd, _, _ = _make_checkpoint((128, 1280, 160, 48), seed=9)
    sd["norm.weight"] = torch.ones(129)
    before = {name: type(mod) for name, mod in model.named_modules()}
    with pytest.raises(ValueError, match=r"norm.weight: the model's tensor has shape \(128,\), the checkpoint's \(129,\)"):
        load_modelopt_checkpoint(model, sd, backend="torch")
    assert {name: type(mod) for name, mod in model.named_modules()} == before
