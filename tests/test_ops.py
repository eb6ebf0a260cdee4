"""Tests for madao_pl.augment.ops: the 14 operations against torchvision on real images, identities,
gradients (autograd checks and the straight-through estimators), directions and units, and Cutout."""

from __future__ import annotations

import itertools
import math

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import load_digits, load_sample_images
from torchvision.transforms import InterpolationMode

from madao_pl.augment.ops import (
    MAGNITUDE_OPS,
    OP_NAMES,
    OPERATIONS,
    SOLARIZE_TEMPERATURE,
    Operation,
    cutout,
    get_operation,
)

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Color", "Contrast", "Brightness", "Sharpness")
STRAIGHT_THROUGH = ("Equalize", "Solarize", "Posterize")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Matched magnitudes and signs: every op is compared at all six (mu, sign) pairs.
MU_SIGN = [(mu, sign) for mu in (0.3, 0.7, 1.0) for sign in (1.0, -1.0)]


# ----------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def digits_u8() -> torch.Tensor:
    """Four sklearn digits, 8x8 -> 32x32 bilinear, on the 8-bit grid, as RGB: (4, 3, 32, 32) uint8."""
    digits = torch.from_numpy(load_digits().images[:4]).float().unsqueeze(1) / 16.0
    big = nnf.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
    return (big * 255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def photos_u8() -> torch.Tensor:
    """sklearn's two colour photographs (china, flower) resized to 64x96: (2, 3, 64, 96) uint8."""
    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1) for p in load_sample_images().images]
    return torch.stack([TF.resize(p, [64, 96], antialias=True) for p in photos])


@pytest.fixture(scope="module")
def ramp_u8() -> torch.Tensor:
    """Every 8-bit level once per channel (channels permuted differently): (1, 3, 16, 16) uint8."""
    levels = torch.arange(256, dtype=torch.uint8)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    return torch.stack([levels, levels.flip(0), levels[perm]]).view(1, 3, 16, 16)


@pytest.fixture(scope="module")
def real_u8(digits_u8, photos_u8) -> list[torch.Tensor]:
    """The real test images as a list of uint8 batches of one size each."""
    return [digits_u8, photos_u8]


def _float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 255.0


def _to_u8(images: torch.Tensor) -> torch.Tensor:
    """Float images on the 8-bit grid back to uint8 (rounding, so the comparison is exact)."""
    return (images * 255.0).round().to(torch.uint8)


def _call(op: Operation, images: torch.Tensor, mu: float | torch.Tensor, sign: float | torch.Tensor = 1.0):
    b = images.shape[0]
    mu_t = mu if isinstance(mu, torch.Tensor) else torch.full((b,), float(mu))
    sign_t = sign if isinstance(sign, torch.Tensor) else torch.full((b,), float(sign))
    return op.fn(images, mu_t.to(images.device, images.dtype), sign_t.to(images.device, images.dtype))


def _paired_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repeat a batch once per (mu, sign) pair: images (len(MU_SIGN) * B, ...), magnitude, sign."""
    b = images.shape[0]
    mus = torch.tensor([mu for mu, _ in MU_SIGN]).repeat_interleave(b)
    signs = torch.tensor([s for _, s in MU_SIGN]).repeat_interleave(b)
    return images.repeat(len(MU_SIGN), 1, 1, 1), mus, signs


# ----------------------------------------------------------------------------------------------- registry


def test_registry_order_ranges_and_flags():
    expected = {
        "ShearX": (0.3, True, True),
        "ShearY": (0.3, True, True),
        "TranslateX": (0.45, True, True),
        "TranslateY": (0.45, True, True),
        "Rotate": (30.0, True, True),
        "Invert": (0.0, False, False),
        "AutoContrast": (0.0, False, False),
        "Equalize": (0.0, False, False),
        "Solarize": (256.0, False, True),
        "Color": (1.0, True, True),
        "Posterize": (4.0, False, True),
        "Contrast": (1.0, True, True),
        "Brightness": (1.0, True, True),
        "Sharpness": (1.0, True, True),
    }
    assert OP_NAMES == tuple(expected)
    assert len(OPERATIONS) == 14
    for op in OPERATIONS:
        assert (op.max_value, op.signed, op.has_magnitude) == expected[op.name], op.name
        assert get_operation(op.name) is op
    assert MAGNITUDE_OPS == tuple(n for n in OP_NAMES if expected[n][2])
    assert len(MAGNITUDE_OPS) == 11
    with pytest.raises(ValueError, match="valid names are ShearX, ShearY"):
        get_operation("shearx")


def test_bad_inputs_raise_clear_errors():
    op = get_operation("Brightness")
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"magnitude must be a tensor of shape \(B,\) = \(2,\)"):
        op.fn(x, torch.tensor(0.5), torch.ones(2))
    with pytest.raises(ValueError, match=r"sign must be a tensor of shape"):
        op.fn(x, torch.full((2,), 0.5), torch.ones(3))
    with pytest.raises(ValueError, match=r"images\.float\(\) / 255"):
        op.fn((x * 255).to(torch.uint8), torch.full((2,), 0.5), torch.ones(2))
    with pytest.raises(ValueError, match="C = 3"):
        get_operation("Color").fn(torch.rand(2, 4, 8, 8), torch.full((2,), 0.5), torch.ones(2))


# ----------------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("name", MAGNITUDE_OPS)
def test_zero_magnitude_is_identity(name, real_u8, ramp_u8):
    op = get_operation(name)
    exact = name in ("Solarize", "Posterize")
    tol = 1e-5 if name in GEOMETRIC else 1e-6
    generator = torch.Generator().manual_seed(1)
    for images_u8 in [*real_u8, ramp_u8]:
        x = _float(images_u8)
        sign = torch.randint(0, 2, (x.shape[0],), generator=generator).float() * 2 - 1
        out = _call(op, x, 0.0, sign)
        if exact:
            assert torch.equal(out, x), name
        else:
            torch.testing.assert_close(out, x, atol=tol, rtol=0)
    if exact:  # the identity holds off the 8-bit grid too (t = 256/255 > 1; 8 bits kept returns the input)
        x = torch.rand(3, 3, 9, 11, generator=generator)
        assert torch.equal(_call(op, x, 0.0), x)
        if name == "Posterize":  # round(4 mu) = 0 keeps all 8 bits
            assert torch.equal(_call(op, x, torch.tensor([0.1, 0.124, 0.0])), x)


# ----------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", OP_NAMES)
def test_shape_dtype_device_range(name, dtype, device):
    op = get_operation(name)
    generator = torch.Generator().manual_seed(2)
    for shape in [(3, 3, 17, 23), (1, 3, 17, 23), (2, 1, 17, 23), (2, 3, 2, 5)]:
        x = torch.rand(shape, generator=generator, dtype=dtype).to(device)
        for mu in (0.5, 1.0):
            sign = (torch.arange(shape[0]) % 2 * 2 - 1).to(dtype)
            out = _call(op, x, mu, sign)
            assert out.shape == x.shape and out.dtype == dtype and out.device == x.device, (name, shape)
            assert torch.isfinite(out).all()
            assert out.min() >= 0 and out.max() <= 1, (name, shape, mu)


def test_empty_batch():
    """A policy group can be empty: every op returns an empty batch instead of failing."""
    x, empty = torch.rand(0, 3, 8, 8), torch.zeros(0)
    for op in OPERATIONS:
        assert op.fn(x, empty, empty).shape == (0, 3, 8, 8), op.name
    assert cutout(x, 3).shape == (0, 3, 8, 8)


@pytest.mark.parametrize("name", OP_NAMES)
def test_batch_equals_per_sample(name, photos_u8):
    """Per-sample parameters are broadcast correctly: the batched call equals one call per sample."""
    op = get_operation(name)
    x, mus, signs = _paired_batch(_float(photos_u8))
    batched = op.fn(x, mus, signs)
    for i in range(x.shape[0]):
        single = op.fn(x[i : i + 1], mus[i : i + 1], signs[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-6, rtol=0)
    # Samples 0, 2, 4 are the same photograph at (0.3, +1), (0.3, -1), (0.7, +1): the parameters matter.
    if op.has_magnitude:
        assert (batched[0] - batched[4]).abs().max() > 1e-2
    if op.signed:
        assert (batched[0] - batched[2]).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------- torchvision


def _tv_geometric(name: str, image: torch.Tensor, value: float) -> torch.Tensor:
    """torchvision's op for a signed magnitude ``value = mu * sign`` (bilinear, zero fill, float tensor)."""
    height, width = image.shape[-2:]
    bilinear = InterpolationMode.BILINEAR
    if name == "Rotate":
        return TF.rotate(image, 30.0 * value, interpolation=bilinear)
    angle = math.degrees(math.atan(0.3 * value))  # a shear factor s is the angle atan(s), in degrees
    translate, shear = {
        "ShearX": ([0.0, 0.0], [angle, 0.0]),
        "ShearY": ([0.0, 0.0], [0.0, angle]),
        "TranslateX": ([0.45 * width * value, 0.0], [0.0, 0.0]),
        "TranslateY": ([0.0, 0.45 * height * value], [0.0, 0.0]),
    }[name]
    # Shears about the top-left corner, as torchvision's AutoAugment and PIL's (1, s, 0, 0, 1, 0).
    center = [0, 0] if name.startswith("Shear") else None
    return TF.affine(
        image, angle=0.0, translate=translate, scale=1.0, shear=shear, interpolation=bilinear, center=center
    )


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_matches_torchvision(name, real_u8):
    """Same sampling points as torchvision's tensor affine/rotate (BILINEAR, zero fill), border included.

    Measured over the whole image, border included: max abs error 1.5e-5 (float32 grid rounding), 99th
    percentile 1.2e-6, mean 1.0e-7; a wrong unit or direction gives errors of order 0.1-1.
    """
    op = get_operation(name)
    for images_u8 in real_u8:
        x, mus, signs = _paired_batch(_float(images_u8))
        out = op.fn(x, mus, signs)
        ref = torch.stack([_tv_geometric(name, x[i], (mus[i] * signs[i]).item()) for i in range(len(x))])
        err = (out - ref).abs()
        assert err.max() < 1e-4, (name, err.max().item())
        assert err.flatten().quantile(0.99) < 1e-5, (name, err.flatten().quantile(0.99).item())
        assert err.mean() < 1e-6, (name, err.mean().item())


_TV_BLEND = {
    "Color": TF.adjust_saturation,
    "Contrast": TF.adjust_contrast,
    "Brightness": TF.adjust_brightness,
    "Sharpness": TF.adjust_sharpness,
}


@pytest.mark.parametrize("name", BLENDS)
def test_blends_match_torchvision(name, real_u8):
    """Blend factor 1 + mu * sign, torchvision float semantics; measured max abs error <= 1.8e-7."""
    op = get_operation(name)
    for images_u8 in real_u8:
        x, mus, signs = _paired_batch(_float(images_u8))
        out = op.fn(x, mus, signs)
        ref = torch.stack([_TV_BLEND[name](x[i], 1.0 + (mus[i] * signs[i]).item()) for i in range(len(x))])
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_invert_and_autocontrast_match_torchvision(real_u8):
    images = [_float(u) for u in real_u8]
    flat = torch.rand(2, 3, 10, 12)
    flat[0, 1] = 0.4  # a constant channel: torchvision leaves it unchanged
    for x in [*images, flat, 0.2 + 0.5 * images[1]]:
        ones = torch.ones(x.shape[0])
        torch.testing.assert_close(get_operation("Invert").fn(x, ones, ones), TF.invert(x), atol=1e-6, rtol=0)
        out = get_operation("AutoContrast").fn(x, ones, ones)
        torch.testing.assert_close(out, TF.autocontrast(x), atol=1e-6, rtol=0)
    assert torch.equal(get_operation("AutoContrast").fn(flat, ones, ones)[0, 1], flat[0, 1])


def _pil_equalize(images_u8: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per image and channel (an 8-bit 'L' image each): the reference
    independent of torchvision, which the op calls."""
    out = torch.empty_like(images_u8)
    for n, c in itertools.product(range(images_u8.shape[0]), range(images_u8.shape[1])):
        plane = PIL.Image.fromarray(images_u8[n, c].numpy())  # 2-D uint8: mode "L"
        out[n, c] = torch.from_numpy(np.asarray(PIL.ImageOps.equalize(plane)).copy())
    return out


def test_equalize_matches_pil_and_torchvision(real_u8, ramp_u8):
    """Exactly PIL's (and torchvision's) uint8 result on 8-bit images; on continuous images, torchvision's
    float result."""
    op = get_operation("Equalize")
    skewed = (_float(real_u8[1]) ** 3 * 255).round().to(torch.uint8)  # dark, far from equalised
    for images_u8 in [*real_u8, ramp_u8, skewed]:
        x = _float(images_u8)
        out = _call(op, x, 0.0)
        ref = TF.equalize(images_u8)
        assert torch.equal(_to_u8(out), ref)
        assert torch.equal(_to_u8(out), _pil_equalize(images_u8))
        torch.testing.assert_close(out, ref.float() / 255.0, atol=1e-6, rtol=0)
    assert not torch.equal(TF.equalize(skewed), skewed)  # the check above is not about the identity
    continuous = torch.rand(3, 3, 13, 17, generator=torch.Generator().manual_seed(3)) ** 2
    continuous[1, 2] = 0.3  # a constant channel (step 0): returned as its 8-bit level
    torch.testing.assert_close(_call(op, continuous, 0.0), TF.equalize(continuous), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mu", [0.3, 0.5, 0.7, 1.0])
def test_posterize_matches_torchvision(mu, real_u8, ramp_u8):
    """Keeps 8 - round(4 mu) bits: exactly torchvision's uint8 posterize (mu 0.3 -> 7, 0.5 -> 6, 0.7 -> 5,
    1.0 -> 4 bits); on continuous input, torchvision's posterize of its uint8 conversion."""
    op = get_operation("Posterize")
    bits = 8 - round(4 * mu)
    for images_u8 in [*real_u8, ramp_u8]:
        out = _call(op, _float(images_u8), mu)
        ref = TF.posterize(images_u8, bits)
        assert torch.equal(_to_u8(out), ref)
        torch.testing.assert_close(out, ref.float() / 255.0, atol=1e-7, rtol=0)
    x = torch.rand(2, 3, 9, 10, generator=torch.Generator().manual_seed(4))
    ref = TF.posterize(TF.to_dtype(x, torch.uint8, scale=True), bits).float() / 255.0
    torch.testing.assert_close(_call(op, x, mu), ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mu", [0.3, 0.5, 0.7, 1.0])
def test_solarize_matches_torchvision(mu, real_u8, ramp_u8):
    """8-bit threshold 256 - 256 mu with torchvision's ``x >= threshold`` rule, exactly on uint8 images.

    mu = 0.5 puts the threshold on the level 128, which the ramp contains: it must be inverted.
    """
    op = get_operation("Solarize")
    for images_u8 in [*real_u8, ramp_u8]:
        out = _call(op, _float(images_u8), mu)
        assert torch.equal(_to_u8(out), TF.solarize(images_u8, threshold=256.0 - 256.0 * mu))
    if mu == 0.5:
        out = _call(op, _float(ramp_u8), mu)
        assert _to_u8(out)[0, 0].flatten()[128] == 127 and _to_u8(out)[0, 0].flatten()[127] == 127


# ----------------------------------------------------------------------------------------------- direction


def _blob(height: int, width: int, row: float, col: float) -> torch.Tensor:
    """A Gaussian blob (sigma 1.5 px) at pixel (row, col): (1, 3, H, W)."""
    ys = torch.arange(height, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, -1)
    blob = torch.exp(-((ys - row) ** 2 + (xs - col) ** 2) / (2 * 1.5**2))
    return blob.expand(1, 3, -1, -1).contiguous()


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    mass = image[0, 0]
    ys = torch.arange(mass.shape[0], dtype=mass.dtype).view(-1, 1)
    xs = torch.arange(mass.shape[1], dtype=mass.dtype).view(1, -1)
    return ((mass * ys).sum() / mass.sum()).item(), ((mass * xs).sum() / mass.sum()).item()


def test_translate_direction_and_unit_exact():
    """sign +1 moves content right (down) by 0.45 * W (H) * mu pixels: integer shifts are exact."""
    x = torch.rand(2, 3, 20, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mu = torch.tensor([0.5, 0.5], dtype=torch.float64)  # 0.45 * 40 * 0.5 = 9 px, 0.45 * 20 * 0.5 = 4.5 px
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = get_operation("TranslateX").fn(x, mu, sign)
    torch.testing.assert_close(out[0, :, :, 9:], x[0, :, :, :-9], atol=1e-9, rtol=0)
    assert out[0, :, :, :9].abs().max() < 1e-9
    torch.testing.assert_close(out[1, :, :, :-9], x[1, :, :, 9:], atol=1e-9, rtol=0)
    mu = torch.tensor([1.0 / 0.45 / 5.0] * 2, dtype=torch.float64)  # 0.45 * 20 * mu = 4 px
    out = get_operation("TranslateY").fn(x, mu, sign)
    torch.testing.assert_close(out[0, :, 4:], x[0, :, :-4], atol=1e-9, rtol=0)
    torch.testing.assert_close(out[1, :, :-4], x[1, :, 4:], atol=1e-9, rtol=0)


def test_rotate_and_shear_directions():
    """Content geometry at mu = 1, sign = +1 on a 41x41 image (centre pixel (20, 20), pixel y down).

    Rotate +30 deg is counter-clockwise: a blob right of the centre moves up. ShearX with factor s = 0.3
    samples at x + s y with y measured from the top edge, so a blob whose centre is 30.5 px below the top
    edge (row 30) moves 0.3 * 30.5 = 9.15 px left; ShearY moves a blob in column 30 9.15 px up (PIL's and
    torchvision's AutoAugment direction and origin).
    """
    one = torch.ones(1, dtype=torch.float64)
    cy, cx = _centroid(get_operation("Rotate").fn(_blob(41, 41, 20, 30), one, one))
    assert abs(cy - (20 - 10 * math.sin(math.radians(30)))) < 0.05
    assert abs(cx - (20 + 10 * math.cos(math.radians(30)))) < 0.05
    cy, cx = _centroid(get_operation("ShearX").fn(_blob(41, 41, 30, 20), one, one))
    assert abs(cy - 30) < 0.05 and abs(cx - (20 - 9.15)) < 0.05
    cy, cx = _centroid(get_operation("ShearY").fn(_blob(41, 41, 20, 30), one, one))
    assert abs(cy - (20 - 9.15)) < 0.05 and abs(cx - 30) < 0.05
    cy, cx = _centroid(get_operation("ShearX").fn(_blob(41, 41, 30, 20), one, -one))
    assert abs(cx - (20 + 9.15)) < 0.05


# ----------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", OP_NAMES)
def test_gradient_reaches_input_and_magnitude(name, photos_u8):
    op = get_operation(name)
    x = _float(photos_u8).double().requires_grad_(True)
    mu = torch.tensor([0.6, 0.4], dtype=torch.float64, requires_grad=True)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    weights = torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (op.fn(x, mu, sign) * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all(), name
    if op.has_magnitude:
        assert torch.isfinite(mu.grad).all() and (mu.grad != 0).all(), name
    else:
        assert mu.grad is None or torch.count_nonzero(mu.grad) == 0


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n not in STRAIGHT_THROUGH])
def test_gradcheck_differentiable_ops(name):
    """Autograd equals finite differences (float64) in the images and, where there is one, the magnitude."""
    op = get_operation(name)
    generator = torch.Generator().manual_seed(7)
    x = (0.1 + 0.8 * torch.rand(2, 3, 7, 9, generator=generator, dtype=torch.float64)).requires_grad_(True)
    mu = 0.2 + 0.6 * torch.rand(2, generator=generator, dtype=torch.float64)
    mu.requires_grad_(op.has_magnitude)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, m: op.fn(a, m, sign), (x, mu), fast_mode=True)


def test_gradient_survives_on_bounds(digits_u8):
    """Pixels exactly at 0 or 1 keep their gradient (``Tensor.clamp`` would zero it: digits are mostly 0)."""
    x = _float(digits_u8).double().requires_grad_(True)
    ones = torch.ones(x.shape[0], dtype=torch.float64)
    assert (x == 0).float().mean() > 0.25
    get_operation("Invert").fn(x, ones, ones).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -1.0))
    x.grad = None
    half = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    get_operation("Brightness").fn(x, half, -ones).sum().backward()  # factor 0.5
    assert torch.equal(x.grad, torch.full_like(x, 0.5))


def test_equalize_and_posterize_straight_through(photos_u8):
    """Equalize: d out / d x = 1. Posterize: d out / d x = 1 and d out / d mu = -4 ln2 2^(4 mu) / 510."""
    x = _float(photos_u8).double().requires_grad_(True)
    zero = torch.zeros(2, dtype=torch.float64)
    get_operation("Equalize").fn(x, zero, zero + 1).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    mu = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    get_operation("Posterize").fn(x, mu, zero + 1).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    per_pixel = -4 * math.log(2) * torch.exp2(4 * mu.detach()) / 510
    torch.testing.assert_close(mu.grad, per_pixel * x[0].numel(), rtol=1e-12, atol=0)


def test_posterize_surrogate_is_calibrated(photos_u8):
    """On a photograph, the surrogate slope in mu matches the hard op's finite difference across one bit
    (mu 0.5 -> 0.75 drops 2 -> 3 bits; slope taken at the midpoint): measured ratios 0.93 and 1.12."""
    x = _float(photos_u8).double()
    op = get_operation("Posterize")
    sign = torch.ones(2, dtype=torch.float64)
    hard_slope = (_call(op, x, 0.75, sign).mean((1, 2, 3)) - _call(op, x, 0.5, sign).mean((1, 2, 3))) / 0.25
    mu = torch.full((2,), 0.625, dtype=torch.float64, requires_grad=True)
    op.fn(x, mu, sign).mean(dim=(1, 2, 3)).sum().backward()
    ratio = mu.grad / hard_slope
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio


def test_solarize_straight_through(photos_u8):
    """d out / d x is the hard op's (+1 below t, -1 at or above); d out / d mu the sigmoid relaxation's, whose
    sign agrees with the hard op's finite difference on a photograph."""
    x = _float(photos_u8).double().requires_grad_(True)
    mu = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)
    sign = torch.ones(2, dtype=torch.float64)
    op = get_operation("Solarize")
    op.fn(x, mu, sign).sum().backward()
    threshold = (256 * (1 - mu.detach()) / 255).view(-1, 1, 1, 1)
    xd = x.detach()
    assert torch.equal(x.grad, torch.where(xd >= threshold, -1.0, 1.0).to(x.dtype))
    z = torch.sigmoid((xd - threshold) / SOLARIZE_TEMPERATURE)
    expected = (z * (1 - z) / SOLARIZE_TEMPERATURE * (256 / 255) * (1 - 2 * xd)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(mu.grad, expected, rtol=1e-10, atol=0)
    hard_change = _call(op, xd, mu.detach() + 0.05).sum((1, 2, 3)) - _call(op, xd, mu.detach()).sum((1, 2, 3))
    assert (torch.sign(hard_change) == torch.sign(mu.grad)).all()


# ----------------------------------------------------------------------------------------------- cutout


def test_cutout_zeroes_one_square_per_sample():
    size = 5
    x = 0.5 + 0.5 * torch.rand(256, 3, 20, 24, generator=torch.Generator().manual_seed(8))
    out = cutout(x, size, generator=torch.Generator().manual_seed(9))
    zeroed = out == 0
    assert torch.equal(zeroed[:, 0], zeroed[:, 1]) and torch.equal(zeroed[:, 0], zeroed[:, 2])
    kept = ~zeroed
    assert torch.equal(out[kept], x[kept])
    corners, inside = set(), 0
    for mask in zeroed[:, 0]:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask.sum() == (r1 - r0) * (c1 - c0) and mask[r0:r1, c0:c1].all()  # one axis-aligned rectangle
        assert r1 - r0 <= size and c1 - c0 <= size
        full = bool(r0 > 0 and r1 < 20 and c0 > 0 and c1 < 24)
        if full:
            assert (r1 - r0, c1 - c0) == (size, size)
            inside += 1
        else:  # clipped by the border: the cut side touches it
            assert (r1 - r0 == size or r0 == 0 or r1 == 20) and (c1 - c0 == size or c0 == 0 or c1 == 24)
        corners.add((int(r0), int(c0)))
    assert inside > 100 and len(corners) > 100
    partial = zeroed[:, 0].sum(dim=(1, 2)) < size * size
    assert 0.1 < partial.float().mean() < 0.6  # centres uniform over the image: some squares leave it


def test_cutout_size_zero_reproducible_and_validated():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(cutout(x, 0), x)
    a = cutout(x, 3, generator=torch.Generator().manual_seed(1))
    b = cutout(x, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError, match="non-negative int"):
        cutout(x, -1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cutout(x[0], 3)
