"""Any picture of one digit -> a 28x28 MNIST-style digit, made the way MNIST's digits were made.

MNIST's digits are light ink on a black background, cropped to the digit, scaled to fit a 20x20 box
keeping their aspect ratio (anti-aliased), and placed in a 28x28 field so that their centre of mass is
at the centre. A network trained on them only recognises inputs made the same way, so `to_mnist`:

1. reads the picture upright (EXIF orientation), flattens transparency onto a contrasting background
   and converts it to grayscale;
2. inverts it when the background is lighter than the ink (dark pen on paper);
3. measures the ink against the paper around it, so a photo's shadows and uneven lighting are no ink;
4. keeps the digit's strokes: pixels clearly above the paper's noise, in connected pieces, without
   specks and without clutter that runs along the picture's edge (a table, the paper's edge);
5. adjusts the stroke width to MNIST's (a thin pen on a large canvas would otherwise vanish);
6. crops, fits into 20x20 and centres by centre of mass in 28x28, with values in [0, 255].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mnist_lit.errors import UserError

BOX, FIELD = 20, 28
# MNIST's stroke width in the 28x28 field (2 * area / perimeter of the ink): median 2.6, 5-95% 2.1-4.1
STROKE_MIN, STROKE_TARGET, STROKE_MAX = 1.8, 2.6, 6.0
# pictures are scaled down to this many pixels on the long side first: plenty for a 20x20 result
WORK_SIZE = 1024


def open_image(path: str | Path):
    """The picture at `path` as a PIL image (fully read), or a UserError saying why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file.")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image.")
    try:
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{path}: the file is empty (0 bytes).")
        with warnings.catch_warnings():
            # a picture over Pillow's pixel limit is refused, not decoded into gigabytes of memory
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.draft("L", (WORK_SIZE, WORK_SIZE))  # JPEG: decode at a reduced size, much faster for photos
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(
            f"{path}: the image declares more pixels than mnist-lit decodes ({err}); it is not a digit "
            "picture (or is a decompression bomb). Use a photo or scan of at most a few megapixels."
        ) from None
    except UnidentifiedImageError:
        raise UserError(
            f"{path}: not an image file (Pillow does not recognise its format; use PNG or JPEG)."
        ) from None
    except PermissionError:
        raise UserError(f"{path}: cannot be read (permission denied).") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: the image is truncated or corrupt ({err}).") from None
    return image


def grayscale(image) -> np.ndarray:
    """float32 (H, W) in [0, 1], upright, transparency flattened onto a background contrasting with ink."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if max(image.size) > WORK_SIZE:
        image = image.copy()
        image.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grayscale
        gray = np.asarray(image, dtype=np.float32)
        low, high = float(gray.min()), float(gray.max())
        return (gray - low) / (high - low) if high > low else np.zeros_like(gray)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255
    rgba = image.convert("RGBA")
    gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    opaque = alpha > 0.5
    # strokes drawn on a transparent canvas: their colour says which background makes them visible
    drawn = float(gray[opaque].mean()) if opaque.any() else 0.0
    background = 1.0 if drawn < 0.5 else 0.0
    return gray * alpha + background * (1 - alpha)


def ink_image(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The ink's strength in [0, 1] over a zero background, whichever way round the picture is, and the noise
    level of that background."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(gray, size=3)  # single hot or dead pixels decide nothing
    level = float(np.median(gray))  # the paper covers more of the picture than the ink
    dark_ink = level - smooth.min() > smooth.max() - level
    # The paper under the ink, by a morphological closing (opening for light ink) over a third of the
    # picture: strokes, narrower than that, vanish from it; shadows and uneven light, wider, stay and so
    # cancel out. Dark ink is measured relative to the paper around it, so a stroke in a shadow counts fully.
    window = max(3, min(gray.shape) // 3)
    if dark_ink:
        paper = ndimage.grey_closing(gray, size=(window, window))
        ink = (paper - gray) / np.maximum(paper, 0.05)
    else:
        paper = ndimage.grey_opening(gray, size=(window, window))
        ink = (gray - paper) / np.maximum(1 - paper, 0.05)
    ink -= np.median(ink)  # the closing lifts the paper by its noise
    sigma = 1.4826 * float(np.median(np.abs(ink))) + 1e-3
    return np.clip(ink, 0.0, 1.0).astype(np.float32), sigma


def digit_mask(ink: np.ndarray, sigma: float) -> tuple[np.ndarray, float, float]:
    """The digit's pixels (bool), the ink level of its strokes and the threshold that found them;
    UserError when there is no digit."""
    from scipy import ndimage

    peak = float(ndimage.uniform_filter(ink, size=3).max())
    if peak < max(0.08, 6 * sigma):
        raise UserError("no digit found: the image is blank or has too little contrast.")
    strong = ink[ink > max(4 * sigma, 0.2 * peak)]
    level = float(np.percentile(strong, 90))  # the strokes' core strength (again below, of the digit alone)
    threshold = max(4 * sigma, 0.35 * level)
    mask = ink > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # clutter at the edge (a table, the paper's edge, a shadow's corner) touches it over a long stretch,
    # or is smaller than a piece inside the picture; a digit drawn up to the edge is neither
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    contact = np.bincount(edge, minlength=n + 1)[1:]
    inside = np.where(contact > 0, 0, sizes).max()
    clutter = (contact > 0.3 * min(ink.shape)) | ((contact > 0) & (sizes < inside))
    if clutter.all():
        clutter[:] = False
    sizes = np.where(clutter, 0, sizes)
    keep = sizes >= max(0.03 * sizes.max(), 2)  # specks of dust or noise are no part of the digit
    if not keep.any():
        raise UserError("no digit found: the image is blank or has too little contrast.")
    mask = np.isin(labels, np.flatnonzero(keep) + 1)
    return mask, float(np.percentile(ink[mask], 90)), threshold


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: 2 * area / perimeter."""
    from scipy import ndimage

    perimeter = (mask & ~ndimage.binary_erosion(mask)).sum()
    return 2.0 * mask.sum() / max(int(perimeter), 1)


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _adjust_stroke(values: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Thicken (or thin) the strokes so that, scaled by `scale`, they are about as wide as MNIST's."""
    from scipy import ndimage

    width = stroke_width(mask) * scale
    if STROKE_MIN <= width <= STROKE_MAX:
        return values
    radius = (STROKE_TARGET - width) / scale / 2  # pixels to add (or remove) on each side of a stroke
    if radius > 0:
        distance = ndimage.distance_transform_edt(~mask)
        return np.maximum(values, np.clip(radius + 0.5 - distance, 0, 1))
    distance = ndimage.distance_transform_edt(mask)
    return values * np.clip(distance + radius + 0.5, 0, 1)


def to_mnist(image) -> torch.Tensor:
    """A PIL image of one digit -> uint8 (28, 28), light digit on black, as MNIST's digits were made."""
    from scipy import ndimage
    from torchvision.transforms.v2.functional import resize

    ink, sigma = ink_image(grayscale(image))
    mask, level, threshold = digit_mask(ink, sigma)
    # the strokes' core becomes full white and the paper black, keeping anti-aliased edges in between
    low = min(3 * sigma, 0.5 * threshold)
    values = np.clip((ink - low) / max(level - low, 1e-6), 0, 1)
    values *= ndimage.binary_dilation(mask, iterations=2)

    rows, cols = _bbox(mask)
    pad = max(rows.stop - rows.start, cols.stop - cols.start)  # room for thicker strokes
    rows = slice(max(rows.start - pad, 0), rows.stop + pad)
    cols = slice(max(cols.start - pad, 0), cols.stop + pad)
    values, mask = values[rows, cols], mask[rows, cols]
    rows, cols = _bbox(mask)
    values = _adjust_stroke(values, mask, BOX / max(rows.stop - rows.start, cols.stop - cols.start))

    digit = values[_bbox(values > 0.05)]
    h, w = digit.shape
    scale = BOX / max(h, w)
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    small = resize(torch.from_numpy(np.ascontiguousarray(digit))[None], size, antialias=True)[0].clamp(0, 1)

    # MNIST put the centre of mass at pixel (14, 14) by an integer shift
    total = small.sum()
    cy = float((small.sum(1) * torch.arange(size[0])).sum() / total)
    cx = float((small.sum(0) * torch.arange(size[1])).sum() / total)
    top = min(max(round(FIELD / 2 - cy), 0), FIELD - size[0])
    left = min(max(round(FIELD / 2 - cx), 0), FIELD - size[1])
    field = torch.zeros(FIELD, FIELD)
    field[top : top + size[0], left : left + size[1]] = small
    return field.mul(255).round().to(torch.uint8)


def load_digit(path: str | Path) -> torch.Tensor:
    """The image file at `path` as a uint8 (28, 28) MNIST digit; UserError naming the file if it cannot be."""
    image = open_image(path)
    try:
        return to_mnist(image)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
