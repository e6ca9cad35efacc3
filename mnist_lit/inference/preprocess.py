"""Any picture of one digit -> a digit of a dataset's shape, made the way that dataset's digits were made.

A network only recognises inputs made as its training digits were, and a data module says how its were
(`image_shape` and `drawing`, mnist_lit/data.py). MNIST's, for one, are light ink on a black background,
cropped to the digit, scaled to fit a 20x20 box keeping their aspect ratio (anti-aliased), and placed in a
28x28 field so that their centre of mass is at the centre; scikit-learn's 8x8 digits (data=digits) are 32x32
black-and-white bitmaps of a digit filling their height, counted in 4x4 blocks. `to_digit`:

1. reads the picture upright (EXIF orientation), flattens transparency onto a contrasting background
   and converts it to grayscale;
2. inverts it when the background is lighter than the ink (dark pen on paper);
3. measures the ink against the paper around it, so a photo's shadows and uneven lighting are no ink;
4. keeps the digit's strokes: pixels clearly above the paper's noise, in connected pieces, without
   specks and without clutter that runs along the picture's edge (a table, the paper's edge);
5. adjusts the stroke width to that of handwritten digits of the size it will have (a thin pen on a large
   canvas would otherwise vanish);
6. crops, fits into the dataset's box and centres it in its field (by centre of mass, or its bounding
   box), counting blocks of a finer bitmap where the dataset did, with values in [0, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mnist_lit.data import Drawing, MNISTDataModule
from mnist_lit.errors import UserError

# strokes between these multiples of the dataset's typical width are left as drawn (MNIST: 1.8-6.0 pixels for
# its 2.6, whose 5-95% are 2.1-4.1)
STROKE_KEPT = (1.8 / 2.6, 6.0 / 2.6)
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


def _adjust_stroke(values: np.ndarray, mask: np.ndarray, scale: float, target: float) -> np.ndarray:
    """Thicken (or thin) the strokes so that, scaled by `scale`, they are about `target` pixels wide."""
    from scipy import ndimage

    width = stroke_width(mask) * scale
    if STROKE_KEPT[0] * target <= width <= STROKE_KEPT[1] * target:
        return values
    radius = (target - width) / scale / 2  # pixels to add (or remove) on each side of a stroke
    if radius > 0:
        distance = ndimage.distance_transform_edt(~mask)
        return np.maximum(values, np.clip(radius + 0.5 - distance, 0, 1))
    distance = ndimage.distance_transform_edt(mask)
    return values * np.clip(distance + radius + 0.5, 0, 1)


def to_digit(image, image_shape: tuple[int, int], drawing: Drawing) -> torch.Tensor:
    """A PIL image of one digit -> float32 `image_shape` pixels in [0, 1], light digit on black, made as a
    dataset's digits were made (`drawing`: its data module's)."""
    from scipy import ndimage
    from torchvision.transforms.v2.functional import resize

    # drawn at the resolution of the dataset's bitmaps (MNIST's own pixels; the digits' 32x32), counted down
    box = drawing.box * drawing.blocks
    field_height, field_width = (side * drawing.blocks for side in image_shape)

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
    values = _adjust_stroke(values, mask, box / max(rows.stop - rows.start, cols.stop - cols.start),
                            drawing.stroke)

    digit = values[_bbox(values > 0.05)]
    h, w = digit.shape
    scale = box / max(h, w)
    size = [min(max(1, round(h * scale)), field_height), min(max(1, round(w * scale)), field_width)]
    small = resize(torch.from_numpy(np.ascontiguousarray(digit))[None], size, antialias=True)[0].clamp(0, 1)

    if drawing.centre == "mass":  # its centre of mass at the field's centre, by an integer shift (MNIST)
        total = small.sum()
        cy = float((small.sum(1) * torch.arange(size[0])).sum() / total)
        cx = float((small.sum(0) * torch.arange(size[1])).sum() / total)
        top = min(max(round(field_height / 2 - cy), 0), field_height - size[0])
        left = min(max(round(field_width / 2 - cx), 0), field_width - size[1])
    else:  # its bounding box centred
        top, left = (field_height - size[0]) // 2, (field_width - size[1]) // 2
    field = torch.zeros(field_height, field_width)
    field[top : top + size[0], left : left + size[1]] = small
    if drawing.blocks > 1:  # a black-and-white bitmap, each pixel of the digit the share of ink in its block
        field = torch.nn.functional.avg_pool2d((field > 0.5).float()[None], drawing.blocks)[0]
    if drawing.levels:
        field = field.mul(drawing.levels).round().div(drawing.levels)
    return field


def to_mnist(image) -> torch.Tensor:
    """A PIL image of one digit -> uint8 (28, 28), light digit on black, as MNIST's digits were made."""
    digit = to_digit(image, MNISTDataModule.image_shape, MNISTDataModule.drawing)
    return digit.mul(255).round().to(torch.uint8)


def load_digit(path: str | Path, datamodule=None) -> torch.Tensor:
    """The image file at `path` as a digit of `datamodule`'s data (to_digit: float pixels in [0, 1]), or
    without one as MNIST's uint8 (28, 28) bytes (to_mnist); UserError naming the file if it cannot be."""
    image = open_image(path)
    try:
        if datamodule is None:
            return to_mnist(image)
        return to_digit(image, datamodule.image_shape, datamodule.drawing)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
