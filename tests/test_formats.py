"""E2M1 / E4M3 / E8M0 encodings and FP4 packing against the independent model."""

import math

import pytest
import torch

from fp4core.formats import fp4 as formats
from independent import e2m1_round, e2m1_value, e4m3_round, e4m3_value, e8m0_value


def test_every_e2m1_code_decodes_to_its_value():
    codes = torch.arange(16, dtype=torch.uint8)
    got = formats.e2m1_decode(codes, torch.float64).tolist()
    assert got == [e2m1_value(c) for c in range(16)]
    assert math.copysign(1.0, got[8]) == -1.0  # code 8 is negative zero


def test_e2m1_round_trip_of_every_representable_value():
    vals = torch.tensor([e2m1_value(c) for c in range(16)])
    assert formats.e2m1_encode(vals).tolist() == list(range(16))


@pytest.mark.parametrize("x,code", [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6),
                                    (5.0, 6), (-0.25, 8), (-0.75, 10), (-5.0, 14)])
def test_e2m1_ties_go_to_the_even_code(x, code):
    assert formats.e2m1_encode(torch.tensor([x])).item() == code


def test_e2m1_encode_matches_model_on_random_values_and_saturates():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=g) * 3
    x = torch.cat([x, torch.tensor([7.0, -100.0, 6.0, 1e-30, -1e-30])])
    got = formats.e2m1_encode(x).tolist()
    assert got == [e2m1_round(v) for v in x.tolist()]
    assert got[-5:] == [7, 15, 7, 0, 8]


def test_e2m1_nan_gives_code_zero():
    assert formats.e2m1_encode(torch.tensor([float("nan")])).item() == 0


def test_pack_unpack_nibble_order():
    codes = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    packed = formats.pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0xF3]]  # element 2i low nibble, 2i+1 high nibble
    assert torch.equal(formats.unpack_fp4(packed), codes)
    with pytest.raises(ValueError, match="even"):
        formats.pack_fp4(torch.zeros(1, 3, dtype=torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_packed_decode_of_every_byte_low_nibble_first(dtype):
    every = torch.arange(256, dtype=torch.uint8)
    got = formats.e2m1_decode_packed(every.reshape(8, 32), dtype)
    assert got.shape == (8, 64) and got.dtype == dtype
    want = [v for b in range(256) for v in (e2m1_value(b & 15), e2m1_value(b >> 4))]
    flat = got.double().reshape(-1).tolist()
    assert flat == want
    assert [math.copysign(1.0, v) for v in flat] == [math.copysign(1.0, v) for v in want]  # -0


def test_packed_decode_keeps_leading_dims_and_takes_fp4_dtype():
    g = torch.Generator().manual_seed(4)
    packed = torch.randint(0, 256, (3, 5, 7), generator=g, dtype=torch.uint8)
    got = formats.e2m1_decode_packed(packed)
    assert torch.equal(got, formats.e2m1_decode(formats.unpack_fp4(packed)))
    if hasattr(torch, "float4_e2m1fn_x2"):
        assert torch.equal(formats.e2m1_decode_packed(packed.view(torch.float4_e2m1fn_x2)), got)


def test_e4m3_decode_every_byte():
    got = formats.e4m3_decode(torch.arange(256, dtype=torch.uint8)).double().tolist()
    want = [e4m3_value(b) for b in range(256)]
    for b, (g, w) in enumerate(zip(got, want)):
        assert (math.isnan(g) and math.isnan(w)) or g == w, b


def test_e4m3_encode_rounds_to_nearest_even_and_saturates():
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(3000, generator=g) * 500, torch.rand(1000, generator=g) * 0.02,
                   torch.tensor([448.0, 464.0, 1e9, 0.0])])
    got = formats.e4m3_encode(x).tolist()
    assert got == [e4m3_round(v) for v in x.tolist()]
    assert got[-4:-1] == [0x7E, 0x7E, 0x7E]  # 448 and everything above saturate to 448
    assert formats.e4m3_encode(torch.tensor([float("nan")])).item() == formats.E4M3_NAN_BYTE


def test_e8m0_decode_every_byte_and_ceil_encode():
    got = formats.e8m0_decode(torch.arange(256, dtype=torch.uint8), torch.float64).tolist()
    assert got[:255] == [e8m0_value(b) for b in range(255)] and math.isnan(got[255])
    x = torch.tensor([1.0, 1.5, 2.0, 0.75, 6.0, 0.0, 2.0 ** -130, 3e38, float("inf")])
    assert formats.e8m0_encode_ceil(x).tolist() == [127, 128, 128, 127, 130, 0, 0, 254, 255]


def test_as_bytes_accepts_one_byte_dtypes_only():
    t = torch.zeros(4, dtype=torch.uint8)
    assert formats.as_bytes(t.view(torch.float8_e4m3fn)).dtype == torch.uint8
    if hasattr(torch, "float4_e2m1fn_x2"):
        assert formats.as_bytes(t.view(torch.float4_e2m1fn_x2)).dtype == torch.uint8
    with pytest.raises(ValueError, match="one-byte"):
        formats.as_bytes(torch.zeros(2, dtype=torch.float16))
