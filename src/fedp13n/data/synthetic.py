"""A synthetic federated EMNIST-62: writers with their own handwriting style and alphabet use.

Why: the quick start and the fast tests need a federated image data set that works offline,
in seconds, and on which personalization measurably helps, as it does on federated EMNIST-62
(Jiang et al. 2019, "Improving Federated Learning Personalization via Model Agnostic Meta
Learning"; TFF's ``emnist_p13n_main.py``). It is a stand-in for *workflows*, never for the
real data in any claim about accuracy.

How: the 62 characters (``0-9``, ``A-Z``, ``a-z``, TFF's label order) are rendered once with
TrueType fonts that matplotlib ships (DejaVu, STIX, Computer Modern) at twice the output
resolution and blurred into a smooth "ink field". Each client is a writer with

* its own style: a main font, a writer-specific alternative glyph for some characters
  (the way people differ in how they write ``a``, ``g``, ``1``, ``7``), slant, rotation,
  size and aspect, offset, stroke width (the threshold applied to the blurred field, so
  lower = bolder), ink darkness and ink noise;
* its own label distribution: class probabilities drawn from a Dirichlet distribution, so
  a writer uses some characters much more than others (as NIST writers filled different
  forms).

Each example applies the writer's affine warp plus a small per-example jitter, sampled
bilinearly from the glyph's field, all vectorized in numpy. Like the NIST data behind
federated EMNIST, characters keep their size relative to the line (lowercase ``o`` is smaller
than ``O``), so case pairs are confusable only up to each writer's own size: another thing
a personalized model can learn.

Output follows TFF's federated EMNIST layout as stored in fedp13n: pixels ``uint8``
``(n, 28, 28)`` where ``k`` means ``k / 255``, 255 = background, dark ink; labels ``int16``.
Every random choice of client ``i`` comes from ``derive_rng(seed, "synthetic", i)``, so the
same seed gives byte-identical arrays and the first clients do not depend on how many are
generated.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.resources import check_memory
from fedp13n.utils.checks import check_positive_int
from fedp13n.utils.seeding import derive_rng

#: Upper sanity bound on the number of synthetic writers.
MAX_SYNTHETIC_CLIENTS = 1_000_000

#: The EMNIST-62 alphabet in label order: 0-9 digits, 10-35 'A'-'Z', 36-61 'a'-'z'.
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: Fonts a writer's main hand is drawn from (files in matplotlib's ``fonts/ttf``).
MAIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "cmss10.ttf",
    "cmr10.ttf",
)
#: Extra fonts that only provide writer-specific alternative glyphs (italic shapes differ:
#: single-storey ``a``, curly ``e``/``f``...).
VARIANT_FONTS = ("STIXGeneralItalic.ttf", "cmti10.ttf", "cmtt10.ttf", "DejaVuSerif-Italic.ttf")
FONTS = MAIN_FONTS + VARIANT_FONTS

SIZE = 28  # output side (EMNIST)
_SCALE = 2  # glyphs are rendered at _SCALE x the output resolution
_HI = SIZE * _SCALE
_CAP_HEIGHT = 15.0  # height of capitals in output pixels (NIST characters fill ~half the box)
_BLUR_SIGMA = 1.5  # in high-resolution pixels; makes the field smooth and stroke width tunable


@dataclass(frozen=True)
class WriterStyle:
    """The handwriting of one synthetic writer (all angles in radians, sizes in pixels)."""

    glyph: np.ndarray  # (num_classes,) index into the glyph bank, per class
    shear: float
    rotation: float
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    threshold: float  # field level where ink starts: lower = thicker strokes
    darkness: float  # ink intensity in (0, 1]
    noise: float  # std of per-pixel ink noise


def make_synthetic_emnist(
    num_clients: int = 100,
    *,
    seed: int = 0,
    min_examples: int = 60,
    max_examples: int = 140,
    test_fraction: float = 0.2,
    num_classes: int = 62,
    label_concentration: float = 0.3,
    variant_probability: float = 0.2,
) -> tuple[ClientData, ClientData]:
    """Generate ``num_clients`` synthetic writers; return ``(train, test)`` ClientData.

    Both parts have the same client ids (``synthetic_0000``, ...) in the same order and every
    client has at least one example in each.

    Args:
        num_clients: number of writers.
        seed: everything is a function of the seed (and the other arguments).
        min_examples, max_examples: each writer's total number of examples (train + test)
            is uniform in this inclusive range.
        test_fraction: share of each writer's examples held out for its test part
            (rounded, at least one). TFF's EMNIST holds out about 10%; the default 20%
            gives less noisy per-client accuracies at these small sizes.
        num_classes: use the first ``num_classes`` characters of :data:`ALPHABET`
            (10 = digits only, 62 = EMNIST-62).
        label_concentration: Dirichlet parameter per class of each writer's label
            distribution; smaller = each writer uses fewer characters (more non-IID).
        variant_probability: chance that a writer draws a given character with an
            alternative glyph instead of its main font's (writer-specific variants that a
            global model cannot attribute, but a personalized one can learn).
    """
    _check_args(
        num_clients,
        min_examples,
        max_examples,
        test_fraction,
        num_classes,
        label_concentration,
        variant_probability,
    )
    bank = glyph_bank()[:, :num_classes]  # (fonts, classes, HI, HI)
    fields = bank.reshape(-1, _HI, _HI)
    train, test = [], []
    for i in range(num_clients):
        cid = f"synthetic_{i:04d}"
        rng = derive_rng(seed, "synthetic", i)
        style = _sample_style(rng, num_classes, variant_probability)
        n = int(rng.integers(min_examples, max_examples + 1))
        probs = rng.dirichlet(np.full(num_classes, label_concentration))
        labels = rng.choice(num_classes, size=n, p=probs).astype(np.int16)
        pixels = _render(rng, fields, style, labels)
        n_test = min(n - 1, max(1, round(test_fraction * n)))
        train.append((cid, pixels[n_test:], labels[n_test:]))
        test.append((cid, pixels[:n_test], labels[:n_test]))
    return ClientData.from_clients(train), ClientData.from_clients(test)


def _check_args(
    num_clients: int,
    min_examples: int,
    max_examples: int,
    test_fraction: float,
    num_classes: int,
    label_concentration: float,
    variant_probability: float,
) -> None:
    check_positive_int("num_clients", num_clients)
    check_positive_int("min_examples", min_examples)
    check_positive_int("max_examples", max_examples)
    if num_clients > MAX_SYNTHETIC_CLIENTS:
        raise ValueError(
            f"num_clients={num_clients:,} is more than {MAX_SYNTHETIC_CLIENTS:,}: the synthetic "
            "dataset is for tests and demos (the real EMNIST-62 has 3,400 writers)."
        )
    if min_examples < 2:
        raise ValueError(
            f"min_examples must be at least 2 (one train and one test example), got {min_examples}."
        )
    if max_examples < min_examples:
        raise ValueError(f"max_examples ({max_examples}) must be >= min_examples ({min_examples}).")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if not 2 <= num_classes <= len(ALPHABET):
        raise ValueError(
            f"num_classes must be in 2..{len(ALPHABET)} (10 = digits, 62 = EMNIST-62), "
            f"got {num_classes}."
        )
    if label_concentration <= 0:
        raise ValueError(f"label_concentration must be positive, got {label_concentration}.")
    if not 0.0 <= variant_probability <= 1.0:
        raise ValueError(f"variant_probability must be in [0, 1], got {variant_probability}.")
    needed = synthetic_memory_bytes(num_clients, min_examples, max_examples)
    check_memory(
        needed,
        f"a synthetic dataset of {num_clients:,} clients",
        "Ask for fewer clients (or fewer examples per client).",
        error=ValueError,
    )


def synthetic_memory_bytes(num_clients: int, min_examples: int, max_examples: int) -> int:
    """Peak bytes :func:`make_synthetic_emnist` needs: each example's 784 uint8 pixels and
    int16 label, twice (the per-client pieces and the concatenated arrays), plus the
    glyph bank and one client's float32 rendering temporaries."""
    per_example = SIZE * SIZE + 2
    mean = (min_examples + max_examples) / 2
    temporaries = 64 << 20  # glyph bank (~11 MB) and float32 work arrays of one client
    return int(2 * num_clients * mean * per_example + 24 * max_examples * per_example) + (
        temporaries
    )


def _sample_style(
    rng: np.random.Generator, num_classes: int, variant_probability: float
) -> WriterStyle:
    main = int(rng.integers(len(MAIN_FONTS)))
    font = np.full(num_classes, main)
    variants = rng.random(num_classes) < variant_probability
    others = [f for f in range(len(FONTS)) if f != main]
    font[variants] = rng.choice(others, size=int(variants.sum()))
    size = rng.uniform(0.8, 1.2)
    aspect = rng.uniform(0.85, 1.15)
    return WriterStyle(
        glyph=font * num_classes + np.arange(num_classes),
        shear=float(rng.uniform(-0.4, 0.4)),
        rotation=float(rng.uniform(-0.15, 0.15)),
        scale_x=float(size * aspect),
        scale_y=float(size / aspect),
        offset_x=float(rng.uniform(-2.0, 2.0)),
        offset_y=float(rng.uniform(-2.0, 2.0)),
        threshold=float(rng.uniform(0.2, 0.5)),
        darkness=float(rng.uniform(0.65, 1.0)),
        noise=float(rng.uniform(0.0, 0.12)),
    )


def _render(
    rng: np.random.Generator, fields: np.ndarray, style: WriterStyle, labels: np.ndarray
) -> np.ndarray:
    """Draw one image per label in the writer's style, with per-example jitter."""
    n = len(labels)
    # Per-example jitter around the writer's style.
    rot = style.rotation + rng.normal(0.0, 0.05, n)
    shear = style.shear + rng.normal(0.0, 0.05, n)
    sx = style.scale_x * np.exp(rng.normal(0.0, 0.05, n))
    sy = style.scale_y * np.exp(rng.normal(0.0, 0.05, n))
    ox = style.offset_x + rng.normal(0.0, 0.7, n)
    oy = style.offset_y + rng.normal(0.0, 0.7, n)
    thr = np.clip(style.threshold + rng.normal(0.0, 0.03, n), 0.1, 0.6)
    # Forward map (glyph -> page): p = R(rot) @ Shear(shear) @ diag(sx, sy) @ q + o.
    # Sampling needs the inverse: q = diag(1/sx, 1/sy) @ Shear(-shear) @ R(-rot) @ (p - o).
    # float32 throughout: these are pixel coordinates, and it halves the work.
    c = np.cos(rot).astype(np.float32)[:, None, None]
    s = np.sin(rot).astype(np.float32)[:, None, None]
    grid = np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2.0
    px = grid[None, None, :] - ox.astype(np.float32)[:, None, None]  # (n, 1, W)
    py = grid[None, :, None] - oy.astype(np.float32)[:, None, None]  # (n, H, 1)
    ux = c * px + s * py  # R(-rot)
    uy = c * py - s * px
    ux -= shear.astype(np.float32)[:, None, None] * uy  # Shear(-shear): x' = x - k*y
    qx = ux * (_SCALE / sx).astype(np.float32)[:, None, None] + (_HI - 1) / 2.0
    qy = uy * (_SCALE / sy).astype(np.float32)[:, None, None] + (_HI - 1) / 2.0
    field = _bilinear(fields, style.glyph[labels], qx, qy)
    ink = np.clip((field - thr.astype(np.float32)[:, None, None]) * (1 / 0.12), 0.0, 1.0)
    darkness = style.darkness * np.exp(rng.normal(0.0, 0.05, n))
    ink *= darkness.astype(np.float32)[:, None, None]
    if style.noise > 0:
        noise = rng.standard_normal(ink.shape, dtype=np.float32)
        ink += (ink > 0) * (np.float32(style.noise) * noise)
    np.clip(ink, 0.0, 1.0, out=ink)
    return np.rint(255.0 * (1.0 - ink)).astype(np.uint8)


def _bilinear(fields: np.ndarray, which: np.ndarray, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Sample ``fields[which[k]]`` at (qx[k], qy[k]); zero (no ink) outside the field."""
    x0 = np.floor(qx)
    y0 = np.floor(qy)
    fx = (qx - x0).astype(np.float32)
    fy = (qy - y0).astype(np.float32)
    x0 = x0.astype(np.intp)
    y0 = y0.astype(np.intp)
    # Outside the field there is no ink: clamp the indices (the clamped samples are zeroed
    # by ``inside``) and gather from the flattened bank, much faster than 3-D fancy indexing.
    inside = (x0 >= 0) & (y0 >= 0) & (x0 < _HI - 1) & (y0 < _HI - 1)
    np.clip(x0, 0, _HI - 2, out=x0)
    np.clip(y0, 0, _HI - 2, out=y0)
    flat = fields.reshape(-1)
    i00 = (which.astype(np.intp) * (_HI * _HI))[:, None, None] + y0 * _HI + x0
    f00 = flat.take(i00)
    f01 = flat.take(i00 + 1)
    f10 = flat.take(i00 + _HI)
    f11 = flat.take(i00 + _HI + 1)
    top = f00 + fx * (f01 - f00)
    bottom = f10 + fx * (f11 - f10)
    return np.where(inside, top + fy * (bottom - top), 0.0)


@functools.cache
def glyph_bank() -> np.ndarray:
    """The blurred ink fields of every character in every font: ``(fonts, 62, 56, 56)``.

    Rendered once per process (about 0.2 s) and read-only afterwards.
    Capitals are scaled to the same height in every font and all characters share a
    baseline, so sizes and vertical positions are comparable across fonts.
    """
    from PIL import Image, ImageDraw, ImageFont

    directory = _font_dir()
    kernel = _gaussian_matrix(_HI, _BLUR_SIGMA)
    bank = np.zeros((len(FONTS), len(ALPHABET), _HI, _HI), dtype=np.float32)
    cap = _CAP_HEIGHT * _SCALE
    for f, name in enumerate(FONTS):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"font {path} not found; the synthetic data set uses fonts shipped with "
                "matplotlib: reinstall matplotlib (pip install --force-reinstall matplotlib)."
            )
        probe = ImageFont.truetype(path, 100)
        top = probe.getbbox("H", anchor="ls")[1]  # negative: capitals rise above baseline
        font = ImageFont.truetype(path, max(8, round(100 * cap / -top)))
        baseline = _HI / 2 + cap / 2 - 0.1 * cap  # leave room for descenders below
        for k, ch in enumerate(ALPHABET):
            left, _, right, _ = font.getbbox(ch, anchor="ls")
            img = Image.new("L", (_HI, _HI), 0)
            ImageDraw.Draw(img).text(
                (_HI / 2 - (left + right) / 2, baseline),
                ch,
                fill=255,
                font=font,
                anchor="ls",
                stroke_width=1,  # pen, not print: keeps serif hairlines from vanishing
                stroke_fill=255,
            )
            ink = np.asarray(img, dtype=np.float32) / 255.0
            bank[f, k] = kernel @ ink @ kernel.T
    bank.setflags(write=False)
    return bank


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``K`` with ``K @ img`` a Gaussian blur along axis 0 (zero outside the image)."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)
