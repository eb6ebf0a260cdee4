"""The 14 differentiable augmentation operations of MADAO (paper Appendix A, Table 5) and Cutout.

Every operation is a pure function on a batch::

    fn(images, magnitude, sign) -> images
    images:    (B, C, H, W) float in [0, 1], C = 3 (C = 1 also works)
    magnitude: (B,) mu in [0, 1], may require grad; mu = 0 is the identity, mu = 1 the strongest
    sign:      (B,) +1 / -1 per sample, used by signed ops only

and returns a (B, C, H, W) tensor of the same dtype and device, in [0, 1]. Per-sample parameters are
broadcast, never looped over, so the policy can apply an operation once to every sample that chose it.

Semantics are torchvision's (``torchvision.transforms.v2.functional``, itself following PIL), with the
magnitude mapped as in the paper:

- ShearX / ShearY: shear factor ``s = 0.3 mu sign`` (a factor, not an angle) about the top-left corner,
  as PIL and torchvision's AutoAugment / RandAugment / TrivialAugmentWide do. The output samples the input
  at ``x_src = x + s y`` (ShearX; x, y measured from the top-left corner, y pointing down), i.e. PIL's
  affine data ``(1, s, 0, 0, 1, 0)`` and ``F.affine(shear=[degrees(atan(s)), 0], center=[0, 0])``: the top
  row stays, content lower down moves left for ``s > 0``. ShearY samples at ``y_src = y + s x``.
- TranslateX / TranslateY: ``0.45 * width (height) * mu * sign`` pixels; positive moves content right
  (down), as ``F.affine(translate=[dx, dy])``.
- Rotate: ``30 mu sign`` degrees about the centre, positive counter-clockwise as ``F.rotate``.
  Geometric ops use bilinear sampling with zero padding (torchvision's tensor ``affine`` with
  ``BILINEAR``), so the gradient reaches mu through the sampling grid.
- Invert ``1 - x``; AutoContrast per image and channel min-max stretch (constant channels unchanged).
- Equalize: torchvision's per-channel histogram equalisation on the 8-bit grid; straight-through to the
  input (``x + (equalized - x).detach()``).
- Solarize: 8-bit threshold ``256 - 256 mu`` (paper range [0, 256]), i.e. ``t = 256 (1 - mu) / 255`` on the
  [0, 1] scale; pixels with ``x >= t`` are inverted (torchvision's rule). At mu = 0, ``t = 256/255 > 1`` so
  nothing changes, for any input. Straight-through estimator, see :func:`solarize`.
- Posterize: keep ``8 - round(4 mu)`` bits of the 8-bit value; 8 bits returns the input unchanged.
  Straight-through estimator, see :func:`posterize`.
- Color / Contrast / Brightness / Sharpness: blend with grayscale / mean gray / black / 3x3 smoothed image,
  factor ``1 + mu sign`` in [0, 2].

Clamping to [0, 1] uses :func:`_clamp_unit`, which, unlike ``Tensor.clamp``, keeps the gradient of values
lying exactly on a bound (black backgrounds, saturated highlights): ``Tensor.clamp`` with scalar bounds
returns a zero gradient there, which would cut the gradient of many real pixels. When autograd records
nothing (grad mode off, or no input requires grad) the ops take the cheap path: ``Tensor.clamp``, and no
straight-through term (``soft - soft.detach()``, 0 in value); the values are the same.

Library use: Equalize calls torchvision's batched uint8 ``equalize`` (PIL's lookup table, exact on 8-bit
levels; ``test_equalize_matches_pil_and_torchvision`` checks it against PIL itself).
The blends are written out because kornia's versions differ where it matters here: its ``sharpness`` and
``adjust_brightness_accumulative`` give the same values but clamp with ``Tensor.clamp`` (zero gradient on
the bounds), its ``adjust_saturation_with_gray_subtraction`` / ``adjust_contrast_with_mean_subtraction``
use luma weight 0.299 where torchvision uses 0.2989, and its ``adjust_brightness`` / ``adjust_contrast`` add
or scale instead of blending. The warps build torchvision's sampling map directly for ``F.affine_grid`` /
``F.grid_sample``, with one (B, 2, 3) matrix per sample: each geometric op is ``affine_warp(x, M)`` with
``M`` from its builder in :data:`WARP_MATRICES`, so a policy can warp every sample that chose any of the
five geometric ops with one :func:`affine_warp` (:func:`madao_pl.augment.stage.apply_stage` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = [
    "MAGNITUDE_OPS",
    "OPERATIONS",
    "OP_NAMES",
    "SOLARIZE_TEMPERATURE",
    "WARP_MATRICES",
    "Operation",
    "affine_warp",
    "auto_contrast",
    "brightness",
    "color",
    "contrast",
    "cutout",
    "equalize",
    "get_operation",
    "invert",
    "posterize",
    "rotate",
    "rotate_matrix",
    "sharpness",
    "shear_x",
    "shear_x_matrix",
    "shear_y",
    "shear_y_matrix",
    "solarize",
    "translate_x",
    "translate_x_matrix",
    "translate_y",
    "translate_y_matrix",
]

SHEAR_MAX = 0.3
TRANSLATE_MAX = 0.45
ROTATE_MAX_DEGREES = 30.0
SOLARIZE_MAX = 256.0
POSTERIZE_MAX_BITS = 4.0
BLEND_MAX = 1.0

SOLARIZE_TEMPERATURE = 0.05
"""Width (on the [0, 1] scale) of the sigmoid that relaxes Solarize's threshold for the gradient to mu."""

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)
_TO_UINT8_SCALE = 256.0 - 1e-3  # torchvision's float -> uint8 conversion: floor(x * (255 + 1 - 1e-3))

MatrixBuilder = Callable[[Tensor, Tensor, int, int], Tensor]
"""``(magnitude (N,), sign (N,), height, width) -> (N, 2, 3)``: a geometric op's sampling matrices."""


# ----------------------------------------------------------------------------------------------- helpers


def _check_inputs(images: Tensor, magnitude: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """Validate an op's arguments; return magnitude and sign as (B, 1, 1, 1) in the images' dtype/device."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"shape {tuple(images.shape)}, {images.dtype}" if isinstance(images, Tensor) else type(images)
        raise ValueError(
            f"images must be a float tensor of shape (B, C, H, W) with values in [0, 1], got {got}; "
            "convert 8-bit images with images.float() / 255 and add a batch dimension with images[None]."
        )
    batch = images.shape[0]
    for name, value in (("magnitude", magnitude), ("sign", sign)):
        if not isinstance(value, Tensor) or value.shape != (batch,):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value)
            raise ValueError(
                f"{name} must be a tensor of shape (B,) = ({batch},), one value per image, got {got}; "
                f"broadcast a shared value with torch.full(({batch},), value)."
            )
    shape = (batch, 1, 1, 1)
    return _like(magnitude, images).view(shape), _like(sign, images).view(shape)


def _like(value: Tensor, images: Tensor) -> Tensor:
    """``value`` in the images' dtype and on their device (itself when it already is: no dispatch)."""
    if value.dtype == images.dtype and value.device == images.device:
        return value
    return value.to(device=images.device, dtype=images.dtype)


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an op on ``tensors``: grad mode on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _clamp_unit(x: Tensor) -> Tensor:
    """Clamp to [0, 1]; gradient 1 on [0, 1] inclusive, 0 outside (``Tensor.clamp`` gives 0 on a bound).

    Without a gradient to keep it is ``Tensor.clamp`` (the same values, one pass instead of two ``where``s).
    """
    if not _needs_grad(x):
        return x.clamp(0.0, 1.0)
    return torch.where(x < 0, 0.0, torch.where(x > 1, 1.0, x))


def _grayscale(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma with torchvision's weights; a 1-channel image is returned as is."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(
            f"this operation needs RGB (C = 3) or grayscale (C = 1) images, got C = {images.shape[1]}; "
            "replicate grayscale data to 3 channels or drop extra channels."
        )
    r, g, b = images.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * images + (1 - factor) * other``, clamped (PIL's ImageEnhance blend)."""
    return _clamp_unit(factor * images + (1.0 - factor) * other)


def _to_8bit_levels(images: Tensor) -> Tensor:
    """Integer 8-bit levels in [0, 255] as floats, by torchvision's float -> uint8 rule (exact on k / 255)."""
    return torch.floor(images * _TO_UINT8_SCALE).clamp(0.0, 255.0)


def affine_warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Resample ``images`` through per-sample centred pixel-space inverse affine maps: one ``grid_sample``.

    Shapes: images (B, C, H, W), matrices (B, 2, 3) -> (B, C, H, W), in [0, 1]; bilinear, zero padding.
    Output pixel (x, y), measured in pixels from the image centre with y pointing down, samples the input at
    ``matrices[n] @ (x, y, 1)``. This is the map torchvision builds for ``affine`` and ``rotate`` on tensors;
    it is rescaled here to ``affine_grid``'s normalised coordinates (``align_corners=False``, as
    torchvision's tensor kernels use), so both sample the same points. Each sample is warped independently,
    so warping a batch that mixes the geometric ops gives each sample what its own op gives it.
    """
    batch, _, height, width = images.shape
    if not isinstance(matrices, Tensor) or matrices.shape != (batch, 2, 3):
        got = tuple(matrices.shape) if isinstance(matrices, Tensor) else type(matrices)
        raise ValueError(f"matrices must have shape (B, 2, 3) = ({batch}, 2, 3), one per image, got {got}")
    if batch == 0:  # affine_grid rejects an empty batch; a policy group may be empty
        return images.clone()
    scale_out = images.new_tensor([width / 2.0, height / 2.0]).view(1, 2, 1)
    theta = torch.cat([matrices[:, :, :2] * scale_out.transpose(1, 2), matrices[:, :, 2:]], dim=2) / scale_out
    if images.device.type == "cpu" and not _needs_grad(theta):
        grid = _affine_grid(theta, height, width)
    else:
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _clamp_unit(warped)


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (N, C, H, W), align_corners=False)`` without its batched matrix product.

    Shapes: theta (N, 2, 3) -> (N, H, W, 2). Each grid entry is ``x t0 + y t1 + t2`` for the pixel's
    normalised (x, y), computed in that order, as the product computes it on CPU: the same values (a test
    checks it bit for bit) with broadcast products instead of a batched matrix product, but no gradient to
    ``theta`` (:func:`affine_warp` calls ``F.affine_grid`` when theta needs one).
    """
    batch = theta.shape[0]
    xs = _normalised_coordinates(width, theta).view(1, 1, 1, width)
    ys = _normalised_coordinates(height, theta).view(1, 1, height, 1)
    entries = theta.reshape(batch, 2, 3, 1, 1)
    grid = (xs * entries[:, :, 0] + ys * entries[:, :, 1]).add_(entries[:, :, 2])  # (N, 2, H, W)
    return grid.permute(0, 2, 3, 1).contiguous()


def _normalised_coordinates(steps: int, like: Tensor) -> Tensor:
    """The pixel centres' coordinates in [-1, 1] along an axis of ``steps`` pixels, as ``affine_grid`` builds
    them with ``align_corners=False``: (steps,), 0 for a single pixel."""
    if steps <= 1:
        return like.new_zeros(1)
    return torch.linspace(-1, 1, steps, dtype=like.dtype, device=like.device) * (steps - 1) / steps


def _affine_inverse(a: Tensor, b: Tensor, tx: Tensor, c: Tensor, d: Tensor, ty: Tensor) -> Tensor:
    """Stack per-sample (B,) entries into (B, 2, 3) matrices [[a, b, tx], [c, d, ty]]."""
    return torch.stack([a, b, tx, c, d, ty], dim=-1).view(-1, 2, 3)


def _warp_op(builder: MatrixBuilder, images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """A geometric op: ``affine_warp(images, builder(mu, sign, H, W))``, the arguments checked."""
    mu, sg = _check_inputs(images, magnitude, sign)
    return affine_warp(images, builder(mu.flatten(), sg.flatten(), images.shape[-2], images.shape[-1]))


# ----------------------------------------------------------------------------------------------- geometric
# Matrix builders: (magnitude (N,), sign (N,), height, width) -> (N, 2, 3) sampling matrices for affine_warp.


def shear_x_matrix(magnitude: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """ShearX's sampling matrix, factor ``s = 0.3 mu sign``: (N,), (N,) -> (N, 2, 3).

    ``[[1, s, s H / 2], [0, 1, 0]]``: about the top-left corner, which lies at ``y = -H/2`` in the centred
    coordinates of :func:`affine_warp`, hence the offset ``s H / 2``.
    """
    s = SHEAR_MAX * magnitude * sign
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine_inverse(one, s, s * (height / 2.0), zero, one, zero)


def shear_y_matrix(magnitude: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """ShearY's sampling matrix, ``s = 0.3 mu sign``: ``[[1, 0, 0], [s, 1, s W / 2]]``; (N,) -> (N, 2, 3)."""
    s = SHEAR_MAX * magnitude * sign
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine_inverse(one, zero, zero, s, one, s * (width / 2.0))


def translate_x_matrix(magnitude: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """TranslateX's sampling matrix, ``dx = 0.45 W mu sign``: ``[[1, 0, -dx], [0, 1, 0]]``; (N, 2, 3)."""
    dx = TRANSLATE_MAX * width * magnitude * sign
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    return _affine_inverse(one, zero, -dx, zero, one, zero)


def translate_y_matrix(magnitude: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """TranslateY's sampling matrix, ``dy = 0.45 H mu sign``: ``[[1, 0, 0], [0, 1, -dy]]``; (N, 2, 3)."""
    dy = TRANSLATE_MAX * height * magnitude * sign
    one, zero = torch.ones_like(dy), torch.zeros_like(dy)
    return _affine_inverse(one, zero, zero, zero, one, -dy)


def rotate_matrix(magnitude: Tensor, sign: Tensor, height: int, width: int) -> Tensor:
    """Rotate's sampling matrix, angle ``a = 30 mu sign`` degrees: ``[[cos, -sin, 0], [sin, cos, 0]]``.

    Counter-clockwise on screen (y down) maps (x, y) to (cos x + sin y, -sin x + cos y); this is its inverse.
    Shapes: (N,), (N,) -> (N, 2, 3).
    """
    angle = torch.deg2rad(ROTATE_MAX_DEGREES * magnitude * sign)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return _affine_inverse(cos, -sin, zero, sin, cos, zero)


def shear_x(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """ShearX by factor ``s = 0.3 mu sign`` about the top-left corner: output(x, y) = input(x + s y, y).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    Equals ``F.affine(img, angle=0, translate=[0, 0], scale=1, shear=[degrees(atan(s)), 0], center=[0, 0])``
    (bilinear), PIL's ``(1, s, 0, 0, 1, 0)``. ``affine_warp(images, shear_x_matrix(...))``.
    """
    return _warp_op(shear_x_matrix, images, magnitude, sign)


def shear_y(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """ShearY by factor ``s = 0.3 mu sign`` about the top-left corner: output(x, y) = input(x, y + s x).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    Equals ``F.affine(img, angle=0, translate=[0, 0], scale=1, shear=[0, degrees(atan(s))], center=[0, 0])``
    (bilinear), PIL's ``(1, 0, 0, s, 1, 0)``. ``affine_warp(images, shear_y_matrix(...))``.
    """
    return _warp_op(shear_y_matrix, images, magnitude, sign)


def translate_x(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Move content right by ``dx = 0.45 W mu sign`` pixels (fractional, bilinear): output(x) = input(x - dx).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    Equals ``F.affine(img, angle=0, translate=[dx, 0], scale=1, shear=[0, 0])`` (bilinear).
    """
    return _warp_op(translate_x_matrix, images, magnitude, sign)


def translate_y(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Move content down by ``dy = 0.45 H mu sign`` pixels (fractional, bilinear): output(y) = input(y - dy).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    Equals ``F.affine(img, angle=0, translate=[0, dy], scale=1, shear=[0, 0])`` (bilinear).
    """
    return _warp_op(translate_y_matrix, images, magnitude, sign)


def rotate(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Rotate by ``30 mu sign`` degrees about the centre, positive counter-clockwise, same output size.

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    Equals ``F.rotate(img, angle)`` with bilinear interpolation and zero fill.
    """
    return _warp_op(rotate_matrix, images, magnitude, sign)


WARP_MATRICES: dict[str, MatrixBuilder] = {
    "ShearX": shear_x_matrix,
    "ShearY": shear_y_matrix,
    "TranslateX": translate_x_matrix,
    "TranslateY": translate_y_matrix,
    "Rotate": rotate_matrix,
}
"""Geometric op name -> its :data:`MatrixBuilder`; the op is ``affine_warp(images, builder(mu, sign, H, W))``
(mu and sign in the images' dtype), so samples of different geometric ops can share one warp."""


# ----------------------------------------------------------------------------------------------- colour


def invert(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """``1 - x``; no magnitude (magnitude and sign are validated, then ignored). (B, C, H, W) -> same."""
    _check_inputs(images, magnitude, sign)
    return _clamp_unit(1.0 - images)


def auto_contrast(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Stretch each image's channels to span [0, 1]: ``(x - min) / (max - min)``; constant channels unchanged.

    torchvision's ``autocontrast`` on float images; no magnitude. Differentiable (also through min and max).
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """
    _check_inputs(images, magnitude, sign)
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    constant = high == low
    scale = torch.where(constant, torch.ones_like(high), high - low)
    low = torch.where(constant, torch.zeros_like(low), low)
    return _clamp_unit((images - low) / scale)


def equalize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Per-channel histogram equalisation on the 8-bit grid (torchvision / PIL semantics); no magnitude.

    The input is quantised as torchvision converts float to uint8 (``floor(x * 255.999)``), then equalised by
    torchvision's batched uint8 ``equalize`` (PIL's lookup table). The result is not differentiable, so the
    gradient passes straight through to the input: ``x + (equalized - x).detach()``.
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """
    _check_inputs(images, magnitude, sign)
    with torch.no_grad():
        levels = _to_8bit_levels(images).to(torch.uint8)
        equalized = TF.equalize(levels).to(images.dtype) / 255.0
    return _clamp_unit(images + (equalized - images).detach())


def solarize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Invert pixels at or above the threshold ``t = 256 (1 - mu) / 255`` (8-bit: ``256 - 256 mu``); unsigned.

    Value: ``where(x >= t, 1 - x, x)`` (torchvision's rule); at mu = 0, ``t > 1`` and the output is the input.
    Gradient (straight-through estimator, "hard value + (soft - soft.detach())"): to the input, the exact
    piecewise derivative of the hard op (+1 below t, -1 at or above); to mu, that of the relaxation
    ``sigmoid((x - t) / T) * (1 - 2 x)`` with T = :data:`SOLARIZE_TEMPERATURE`, which smooths the step over
    about T of intensity, so pixels near the threshold tell mu which way to move.
    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) ignored -> (B, C, H, W).
    """
    mu, _ = _check_inputs(images, magnitude, sign)
    threshold = (1.0 - mu) * SOLARIZE_MAX / 255.0
    hard = torch.where(images >= threshold.detach(), 1.0 - images, images)
    if not _needs_grad(images, mu):  # the straight-through term is 0 in value
        return _clamp_unit(hard)
    x = images.detach()
    soft = torch.sigmoid((x - threshold) / SOLARIZE_TEMPERATURE) * (1.0 - 2.0 * x)
    return _clamp_unit(hard + (soft - soft.detach()))


def posterize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Keep the top ``8 - round(4 mu)`` bits of each 8-bit value (round half to even); unsigned.

    Value: torchvision's uint8 ``posterize`` on the 8-bit levels of the input (float -> uint8 as torchvision
    converts), divided by 255; with 8 bits kept (4 mu < 0.5) the input is returned unchanged.
    Gradient (straight-through estimator, "hard.detach() + (soft - soft.detach())"):
    ``soft = x - (2^(4 mu) - 1) / 510``, the hard op's mean value when the dropped low bits are uniform,
    continued to fractional bit counts: d out / d x = 1, d out / d mu = -4 ln2 2^(4 mu) / 510 per pixel.
    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) ignored -> (B, C, H, W).
    """
    mu, _ = _check_inputs(images, magnitude, sign)
    with torch.no_grad():
        dropped = torch.round(POSTERIZE_MAX_BITS * mu)
        step = torch.exp2(dropped)
        kept = torch.floor(_to_8bit_levels(images) / step) * step / 255.0
        hard = torch.where(dropped == 0, images, kept)
    if not _needs_grad(images, mu):  # the straight-through term is 0 in value
        return _clamp_unit(hard)
    soft = images - (torch.exp2(POSTERIZE_MAX_BITS * mu) - 1.0) / 510.0
    return _clamp_unit(hard + (soft - soft.detach()))


def color(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Saturation: blend with the grayscale image, factor ``1 + mu sign`` (torchvision ``adjust_saturation``).

    Grayscale images (C = 1) are returned unchanged, as PIL and torchvision do.
    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    """
    mu, sg = _check_inputs(images, magnitude, sign)
    if images.shape[1] == 1:
        return _clamp_unit(images)
    return _blend(images, _grayscale(images), 1.0 + BLEND_MAX * mu * sg)


def contrast(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Blend with the per-image mean gray level, factor ``1 + mu sign`` (torchvision ``adjust_contrast``).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    """
    mu, sg = _check_inputs(images, magnitude, sign)
    mean = _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, 1.0 + BLEND_MAX * mu * sg)


def brightness(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Blend with black, i.e. scale by ``1 + mu sign`` (torchvision ``adjust_brightness``).

    Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    """
    mu, sg = _check_inputs(images, magnitude, sign)
    return _clamp_unit(images * (1.0 + BLEND_MAX * mu * sg))


def sharpness(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """Blend with the 3x3 smoothed image (kernel [[1,1,1],[1,5,1],[1,1,1]] / 13), factor ``1 + mu sign``.

    torchvision ``adjust_sharpness``: the 1-pixel border is left unchanged; images smaller than 3x3 are
    returned unchanged. Shapes: images (B, C, H, W), magnitude (B,), sign (B,) -> (B, C, H, W).
    """
    mu, sg = _check_inputs(images, magnitude, sign)
    channels, height, width = images.shape[1:]
    if height < 3 or width < 3:
        return _clamp_unit(images)
    kernel = images.new_ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(channels, 1, 3, 3)
    if images.dtype == torch.float32 and images.device.type == "cpu":
        # Channels-last: the same float32 sums on CPU (equal values and gradients; not in float64), by a
        # faster depthwise-convolution kernel at large images.
        channels_last = images.contiguous(memory_format=torch.channels_last)
        smoothed = F.conv2d(channels_last, kernel, groups=channels).contiguous()
    else:
        smoothed = F.conv2d(images, kernel, groups=channels)
    inner = images[:, :, 1:-1, 1:-1]
    delta = (1.0 - (1.0 + BLEND_MAX * mu * sg)) * (smoothed - inner)
    return _clamp_unit(images + F.pad(delta, (1, 1, 1, 1)))


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Operation:
    """One augmentation operation: its name, batched function and magnitude range.

    ``fn(images, magnitude, sign)`` maps (B, C, H, W) images with per-sample magnitude mu and sign, both (B,),
    to augmented images. ``max_value`` is the range at mu = 1 in the op's own unit (shear factor, fraction of
    the size, degrees, 8-bit threshold, bits, blend-factor delta), 0.0 for ops without magnitude; signed ops
    use ``mu * sign * max_value``.
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    max_value: float
    signed: bool
    has_magnitude: bool


OPERATIONS: tuple[Operation, ...] = (
    Operation("ShearX", shear_x, SHEAR_MAX, signed=True, has_magnitude=True),
    Operation("ShearY", shear_y, SHEAR_MAX, signed=True, has_magnitude=True),
    Operation("TranslateX", translate_x, TRANSLATE_MAX, signed=True, has_magnitude=True),
    Operation("TranslateY", translate_y, TRANSLATE_MAX, signed=True, has_magnitude=True),
    Operation("Rotate", rotate, ROTATE_MAX_DEGREES, signed=True, has_magnitude=True),
    Operation("Invert", invert, 0.0, signed=False, has_magnitude=False),
    Operation("AutoContrast", auto_contrast, 0.0, signed=False, has_magnitude=False),
    Operation("Equalize", equalize, 0.0, signed=False, has_magnitude=False),
    Operation("Solarize", solarize, SOLARIZE_MAX, signed=False, has_magnitude=True),
    Operation("Color", color, BLEND_MAX, signed=True, has_magnitude=True),
    Operation("Posterize", posterize, POSTERIZE_MAX_BITS, signed=False, has_magnitude=True),
    Operation("Contrast", contrast, BLEND_MAX, signed=True, has_magnitude=True),
    Operation("Brightness", brightness, BLEND_MAX, signed=True, has_magnitude=True),
    Operation("Sharpness", sharpness, BLEND_MAX, signed=True, has_magnitude=True),
)
"""The 14 operations in the paper's order (Appendix A)."""

OP_NAMES: tuple[str, ...] = tuple(op.name for op in OPERATIONS)
"""Names of :data:`OPERATIONS`, in order."""

MAGNITUDE_OPS: tuple[str, ...] = tuple(op.name for op in OPERATIONS if op.has_magnitude)
"""Names of the 11 operations with a magnitude parameter, in registry order."""

_BY_NAME = {op.name: op for op in OPERATIONS}


def get_operation(name: str) -> Operation:
    """Look an operation up by its exact name; raise ``ValueError`` listing the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown operation {name!r}; valid names are {', '.join(OP_NAMES)}") from None


# ----------------------------------------------------------------------------------------------- cutout


def cutout(images: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one ``size x size`` square per image, in all channels.

    The square's centre is uniform over the pixels, so the square may be partly outside the image (then only
    its inside part is zeroed). Rows ``[cy - size // 2, cy - size // 2 + size)``, same for columns. Batched,
    no loop over samples; ``size = 0`` returns the input. ``generator`` (on any device) makes it reproducible.
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images)
        raise ValueError(f"cutout expects images of shape (B, C, H, W), got {got}; add a batch dimension.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"cutout size must be a non-negative int (pixels), got {size!r}; use 0 to disable.")
    if size == 0:
        return images
    batch, _, height, width = images.shape
    draw_device = generator.device if generator is not None else images.device
    cy = torch.randint(0, height, (batch, 1), generator=generator, device=draw_device).to(images.device)
    cx = torch.randint(0, width, (batch, 1), generator=generator, device=draw_device).to(images.device)
    rows = torch.arange(height, device=images.device).unsqueeze(0) - (cy - size // 2)
    cols = torch.arange(width, device=images.device).unsqueeze(0) - (cx - size // 2)
    in_rows = (rows >= 0) & (rows < size)
    in_cols = (cols >= 0) & (cols < size)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))
    return images * keep.unsqueeze(1).to(images.dtype)
