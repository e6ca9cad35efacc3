"""Training-time augmentation of whole batches of flattened digits, on the batch's own device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lit.errors import UserError


class RandomAffine(nn.Module):
    """A random affine map per image (rotation, scale, shear, translation), optionally plus a smooth random
    (elastic) displacement, applied to a (B, H * W) batch of `image_shape` images with one affine_grid +
    grid_sample.

    Ranges are symmetric: an angle in [-degrees, degrees], a zoom in [1 - scale, 1 + scale], a shear angle in
    [-shear, shear] degrees, a shift in [-translate, translate] pixels per axis. `elastic` is the largest
    displacement in pixels of `elastic_grid` x `elastic_grid` random control points, bilinearly upsampled to
    a smooth field (a cheap stand-in for Simard et al.'s Gaussian-smoothed noise).

    Only in training mode: `eval()` makes it the identity. Parameters come from torch's RNG on the batch's
    device, so `seed_everything` makes a run reproducible.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: float = 0.0,
        shear: float = 0.0,
        elastic: float = 0.0,
        elastic_grid: int = 4,
        image_shape: Sequence[int] = (28, 28),
    ):
        super().__init__()
        if min(degrees, translate, scale, shear, elastic) < 0 or scale >= 1 or elastic_grid < 2:
            raise UserError(
                f"model.augment: ranges must be >= 0, scale < 1, elastic_grid >= 2 (got degrees={degrees}, "
                f"translate={translate}, scale={scale}, shear={shear}, elastic={elastic}, "
                f"elastic_grid={elastic_grid})."
            )
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.elastic, self.elastic_grid, self.image_shape = elastic, elastic_grid, tuple(image_shape)

    def extra_repr(self) -> str:
        return (f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
                f"shear={self.shear}, elastic={self.elastic}, elastic_grid={self.elastic_grid}")

    def _uniform(self, n: int, bound: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, device=like.device, dtype=like.dtype) * 2 - 1) * bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, (height, width) = len(x), self.image_shape
        images = x.reshape(n, 1, height, width)
        angle = self._uniform(n, math.radians(self.degrees), x)
        shear = self._uniform(n, math.radians(self.shear), x)
        zoom = 1 + self._uniform(n, self.scale, x)
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # theta maps output to input coordinates: rotation @ shear, divided by the zoom (zoom > 1 enlarges)
        theta = torch.stack([
            torch.stack([cos, cos * tan - sin], 1), torch.stack([sin, sin * tan + cos], 1),
        ], 1) / zoom[:, None, None]
        # a pixel is 2 / width (x) or 2 / height (y) in grid_sample's [-1, 1] coordinates (align_corners=False)
        shift_x, shift_y = self._uniform(n, self.translate, x), self._uniform(n, self.translate, x)
        shift = torch.stack([shift_x * 2 / width, shift_y * 2 / height], 1)
        theta = torch.cat([theta, shift[:, :, None]], 2)
        grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
        if self.elastic > 0:
            k = self.elastic_grid
            bound = x.new_tensor([self.elastic * 2 / width, self.elastic * 2 / height])
            coarse = self._uniform(n * 2 * k * k, 1.0, x).reshape(n, 2, k, k) * bound[None, :, None, None]
            field = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1)
        # sample around each image's background (its darkest value), so that pixels coming from outside the
        # image are background whether or not the inputs were standardised
        background = x.amin(1)[:, None, None, None]
        out = F.grid_sample(images - background, grid, padding_mode="zeros", align_corners=False)
        return (out + background).reshape(n, -1)
