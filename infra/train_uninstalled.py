"""`daguerre train` from a bare checkout, without installing the package.

For machines that cannot install anything (a lent GPU image has torch, OpenCV and numpy but no
network): training needs only those (tests/test_training.py checks it). The checkout's folders
are mapped the way pyproject.toml maps them (models/ -> daguerre.models, ...).

    python3 infra/train_uninstalled.py denoise runs/denoise-s.safetensors \\
        --data ../shared/datasets/train/BSDS500-train --minutes 20 --device cuda --no-progress
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# At import, not under __main__: data workers are spawned processes that import this file
# again (as __mp_main__) before they unpickle their work, and need the same mapping.
sys.path.insert(0, str(ROOT))
import daguerre  # noqa: E402

# daguerre.models, .flows and .tasks live at the checkout's top level.
if str(ROOT) not in daguerre.__path__:
    daguerre.__path__.append(str(ROOT))

if __name__ == "__main__":
    from daguerre.models.training import main

    main()
