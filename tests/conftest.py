"""Test set-up: the MGH bank is imported as a plain module from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
