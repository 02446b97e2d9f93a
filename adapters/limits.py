"""Input limits, in one place: what a single untrusted input may cost before it is refused.

Each limit is an adapter constructor argument (`Adapter(..., max_image_pixels=…, max_json_bytes=…,
max_archive_members=…)`) with the safe default below. Exceeding one is never a crash: an item over a
limit is quarantined with a reason naming the limit; a whole-source file over a limit (a COCO export
too large to read, an archive with too many members) is a one-line typed error.
"""

from __future__ import annotations

# An image whose header declares more pixels is quarantined before it is decoded (decompression bombs).
# 100 megapixels: the largest real radiographs (BIMCV DX, ~4300x4300) are under 20.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000



def max_image_bytes(max_image_pixels: int) -> int:
    """The largest image file worth reading: 8 bytes a pixel (16-bit RGBA, uncompressed) plus 1 MiB.
    A larger file cannot hold an image within `max_image_pixels`; it is quarantined unread."""
    return max_image_pixels * 8 + 2**20


# A JSON file (COCO export, Darwin JSON, DICOM JSON sidecar) larger than this is not parsed.
# The real V7 COCO export is a few MB; a sidecar is a few kB.
DEFAULT_MAX_JSON_BYTES = 64 * 1024 * 1024

# An archive (BIMCV .tar.gz part, V7 zip) with more members than this is refused as a whole.
# The largest real BIMCV part holds a few tens of thousands of members.
DEFAULT_MAX_ARCHIVE_MEMBERS = 1_000_000

# The Pillow decoders an image may be read with: raster formats only. Not EPS (Pillow hands it to
# Ghostscript, an external program, on load); an image in any other format is quarantined unreadable.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG also opens MPO
