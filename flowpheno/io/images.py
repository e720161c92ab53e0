"""Image folders in the LFW layout: one sub-folder per individual, ``Name/Name_0001.jpg``.

Images (PNG or JPEG, any case of suffix) are resized to ``size x size`` and kept as
8-bit integers; ``individuals`` gives each image's sub-folder, which is what the
equicorrelated-blocks model treats as a block of repeated measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowpheno.errors import FlowphenoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageSet:
    """Images of individuals, as :func:`read_image_folder` reads them.

    ``pixels``: ``(n, C, size, size)`` uint8 (C = 3 for RGB, 1 for grey); ``individuals``:
    ``(n,)`` index into ``names`` of each image's individual; ``names``: one sub-folder name
    per individual; ``files``: each image's path relative to the folder read.
    """

    pixels: np.ndarray
    individuals: np.ndarray
    names: list[str]
    files: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]


def read_image_folder(root: str | Path, size: int = 32, grayscale: bool = False) -> ImageSet:
    """Every image under ``root/<individual>/``, resized (bilinear) to ``size x size`` pixels.

    Sub-folders without images and hidden folders are skipped; images are read in
    sorted order of folder and file name.

    Raises:
        FlowphenoError: ``root`` is not a folder, an image cannot be read (naming it), or no
            image is found.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FlowphenoError(f"--images {root}: not a folder (expected one sub-folder per individual, as in LFW)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    pixels, individuals, names, files = [], [], [], []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            continue
        names.append(folder.name)
        for path in images:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if grayscale else "RGB").resize((size, size), Image.BILINEAR)
                    array = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as error:
                raise FlowphenoError(f"{path}: cannot read this image ({error}); remove or replace the file") from None
            pixels.append(array[None] if grayscale else array.transpose(2, 0, 1))
            individuals.append(len(names) - 1)
            files.append(str(path.relative_to(root)))
    if not pixels:
        raise FlowphenoError(
            f"--images {root}: no PNG or JPEG images in sub-folders; expected {root}/<individual>/<individual>_0001.jpg"
        )
    return ImageSet(np.stack(pixels), np.asarray(individuals), names, files)
