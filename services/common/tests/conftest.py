"""Unit tests of the shared service runtime: real servers on port 0, raw channels."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # common_testing
