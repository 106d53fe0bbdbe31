"""The one canonical JSON form dockmesh hashes and stores: sorted keys, no spaces, UTF-8.

Hash inputs and label payloads must agree byte for byte across versions and machines, so
every place that serialises a configuration for comparison goes through here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any, length: int = 16) -> str:
    """A short, stable hash of `value`'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]
