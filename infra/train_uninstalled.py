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

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import daguerre

    # daguerre.models, .flows and .tasks live at the checkout's top level.
    daguerre.__path__.append(str(ROOT))
    from daguerre.models.training import main

    main()
