from __future__ import annotations

import os

# Tests never touch a hub, and never write the real site salt.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEDTI_SALT", "test-salt-not-secret")
