"""covid-cxr-unified: the build pipeline, split guards, license policy, cards and CLI."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

# Arrow allocates from its bundled jemalloc unless the user chose otherwise (not built on Windows).
# Peak RSS of full builds: metadata-only 11k/110k records, mimalloc (Arrow's default) 321/383 MB,
# malloc 233/280, jemalloc 245/295; 300 images at 2800 px, mimalloc 615, malloc 813 (fragmented by
# multi-MB image buffers), jemalloc 584. Read when pyarrow is first imported: so only if it was not
# imported before this package.
# Its freed pages go back to the system at once (decay 0, not after a second). Whole builds, peak RSS:
# metadata-only 11k / 110k records 228 / 244 MB (240 / 266 with the default decay); 11k images at
# 512 px 352 MB in 73 s (433 MB in 71 s: pages of row-group buffers are handed out afresh).
if sys.platform != "win32":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

try:
    __version__ = version("covid-cxr-unified")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"
