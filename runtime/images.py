"""Image inputs (``image_inputs``): encoded JPEG or PNG bytes in, the tensor the model takes out.

A request's images (a BYTES tensor ``[N]``, one image per row) become one array ``[N, C, H, W]`` (or ``[N, H, W, C]``)
written in place: each image is decoded, converted to the channel order (RGB, BGR or L; an alpha channel is dropped;
16-bit grey is scaled to 8 bits, its high byte), resized when ``resize`` says so (Pillow's bilinear filter, which also
smooths when it shrinks), and normalised: ``(pixel / 255 - mean) / std`` for FP32 and FP16 inputs, the pixels as they
are (0..255) for UINT8. With ``resize``, a JPEG larger than the target is decoded at the smallest of its DCT scales
(1/2, 1/4, 1/8) still at least the target (Pillow's ``Image.draft``), then resized bilinearly: 2-8x less decoding
for a large photo. Every image's header is read, and the sizes checked (``max_image_pixels``, a bound on the pixels
of the request's images together, and the model's height and width), before any is decoded or the tensor allocated:
a decompression bomb, one image or many, or a request with one bad image, costs no decoding.

Everything here blocks. The server calls it from its stage threads (``server/stages.py``); Pillow releases the GIL
while it decodes, converts and resizes. Only a model with image inputs imports this module (and so Pillow).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from kubeserve.runtime.protocol.errors import BadRequest
from PIL import Image, UnidentifiedImageError

# Only these are parsed at all: other formats' decoders stay out of reach of what clients send.
FORMATS = ("JPEG", "PNG")
# Other images, known by their first bytes, to name them in the error.
OTHER_FORMATS = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WEBP"}
# 16-bit grey (PNG): to 8 bits by its high byte (Pillow's convert("L") would clip at 255).
SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L"})
# Pillow's own bomb check (a warning, then an error, past a process-wide pixel count) gives way to max_image_pixels,
# checked at the same point: after the header, before decoding.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True, slots=True)
class ImageDecoder:
    """How one input's images become its tensor: the ``image_inputs`` setting, checked against the model at load."""

    name: str
    mode: str  # Pillow's: "RGB" (also for BGR) or "L"
    bgr: bool
    channels_last: bool  # NHWC
    size: tuple[int, int]  # (height, width) every image must have once resized; -1: its own, alike in a request
    resize: bool
    dtype: np.dtype
    scale: np.ndarray | None  # per channel, shaped for the layout: 1 / (255 * std); None: pixels as they are
    offset: np.ndarray | None  # per channel: mean / std; None: no mean
    max_pixels: int

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def decode(self, images: np.ndarray) -> np.ndarray:
        """A request's images (``[N]``, encoded) as the model's tensor; a bad image is a 400 naming it."""
        if not len(images):
            raise BadRequest(f"input '{self.name}' holds no image")
        opened: list[Image.Image] = []
        try:
            for index, item in enumerate(images):
                opened.append(self._open(item, self._where(index, len(images))))
            self._check_total(opened)
            height, width = self._batch_size(opened)
        except BadRequest:
            for image in opened:
                image.close()
            raise
        shape = (height, width, self.channels) if self.channels_last else (self.channels, height, width)
        tensor = np.empty((len(opened), *shape), dtype=self.dtype)
        for index, image in enumerate(opened):
            with image:  # closed once written: one image's pixels at a time besides the tensor
                self._write(self._decoded(image, self._where(index, len(images))), tensor[index])
        return tensor

    def blank_png(self) -> bytes:
        """A black image this input takes (the synthetic warm-up's): its size, or 1 where any size goes."""
        height, width = (max(1, dim) for dim in self.size)
        encoded = io.BytesIO()
        Image.new(self.mode, (width, height)).save(encoded, "PNG")
        return encoded.getvalue()

    def _where(self, index: int, count: int) -> str:
        return f"input '{self.name}'" + (f", image {index}" if count > 1 else "")

    def _open(self, item: object, where: str) -> Image.Image:
        """The image's header, read and checked; nothing is decoded yet."""
        if not isinstance(item, bytes | memoryview):
            raise BadRequest(
                f"{where}: an image comes as bytes: binary data (Triton's binary tensor extension), or a JSON string "
                'in base64 with the input\'s parameters {"content_type": "base64"}'
            )
        try:
            image = Image.open(io.BytesIO(item), formats=FORMATS)
        except UnidentifiedImageError:
            head = bytes(item[:4])
            other = next((name for magic, name in OTHER_FORMATS.items() if head.startswith(magic)), None)
            if other is not None:
                raise BadRequest(f"{where}: unsupported image format {other}; send JPEG or PNG") from None
            raise BadRequest(f"{where}: not an image ({len(item)} bytes that are neither JPEG nor PNG)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise BadRequest(f"{where}: a broken or truncated image: {error}") from None
        width, height = image.size
        if width * height > self.max_pixels:
            raise BadRequest(
                f"{where}: the image is {height}x{width} (height x width): {width * height:,} pixels, more than "
                f"max_image_pixels ({self.max_pixels:,})"
            )
        return image

    def _check_total(self, opened: Sequence[Image.Image]) -> None:
        """``max_image_pixels`` bounds the request's images together: what decoding them (and, without resize, their
        tensor) takes grows with the sum."""
        total = sum(image.size[0] * image.size[1] for image in opened)
        if total > self.max_pixels:
            raise BadRequest(
                f"input '{self.name}': the request's {len(opened)} images are {total:,} pixels (width x height) in "
                f"all, more than max_image_pixels ({self.max_pixels:,}), a bound on one request's images together"
            )

    def _batch_size(self, opened: Sequence[Image.Image]) -> tuple[int, int]:
        """The height and width of the request's tensor: the model's (or resize's), else the images' own, which must
        then be alike."""
        if self.resize:
            return self.size
        height, width = (want if want != -1 else got for want, got in zip(self.size, opened[0].size[::-1], strict=True))
        for index, image in enumerate(opened):
            if image.size != (width, height):
                got_width, got_height = image.size
                raise BadRequest(
                    f"{self._where(index, len(opened))}: the image is {got_height}x{got_width} (height x width), not "
                    f"{height}x{width}: without resize (image_inputs), an image must have the model's height and "
                    "width, and the images of one request one size"
                )
        return height, width

    def _decoded(self, image: Image.Image, where: str) -> np.ndarray:
        """The image's pixels, ``[height, width, channels]`` uint8, converted and resized."""
        box = None
        image_format = image.format
        try:
            if self.resize and image_format == "JPEG":
                # Decoded at the smallest DCT scale still at least the target; box: the scaled image's area.
                drafted = image.draft(self.mode, self.size[::-1])
                box = drafted[1] if drafted is not None else None
            image.load()
            if image.mode in SIXTEEN_BIT_GREY:
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), "L")
            if image.mode != self.mode:
                image = image.convert(self.mode)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise BadRequest(f"{where}: the {image_format} image cannot be decoded: {error}") from None
        if self.resize and (image.size != self.size[::-1] or box not in (None, (0, 0, *image.size))):
            image = image.resize(self.size[::-1], Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(image)
        return pixels if pixels.ndim == 3 else pixels[:, :, np.newaxis]

    def _write(self, pixels: np.ndarray, target: np.ndarray) -> None:
        """``pixels`` into ``target`` (one row of the tensor) in its layout and datatype, normalised in place."""
        if self.bgr:
            pixels = pixels[:, :, ::-1]
        if not self.channels_last:
            pixels = pixels.transpose(2, 0, 1)
        if self.scale is None:
            np.copyto(target, pixels)
            return
        np.multiply(pixels, self.scale, out=target)
        if self.offset is not None:
            np.subtract(target, self.offset, out=target)
