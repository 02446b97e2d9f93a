"""covid-cxr-unified: the build pipeline, split guards, license policy, cards and CLI."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# Arrow allocates from the C library's malloc unless the user chose otherwise. Arrow's default
# (mimalloc) kept ~50 MB of freed Parquet buffers resident per 100k records of a build; malloc gives
# them back. Read once, when pyarrow is first imported: so only if it was not imported before this.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

try:
    __version__ = version("covid-cxr-unified")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"
