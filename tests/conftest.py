"""Shared pytest set-up: the repository root on sys.path (tests import
`tests.kernel...`); markers are registered in pyproject.toml. tests/guest runs
only inside a guest kernel (scripts/test-guest sets ALLOCWATCH_GUEST)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

collect_ignore = [] if os.environ.get("ALLOCWATCH_GUEST") else ["guest"]
