"""The verl lane's tests share `verl_batches.py` (also imported by `two_ranks.py`, run as a script)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
