from __future__ import annotations

import os

import pytest

# Tests never touch a hub, and never write the real site salt.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEDTI_SALT", "test-salt-not-secret")
# ... nor write into the user's medti cache (embedded bases, remembered model hashes)
if "MEDTI_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MEDTI_CACHE"] = tempfile.mkdtemp(prefix="medti-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEDTI_CACHE"], True)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine two spinning OpenMP threads
    per process make tiny models many times slower; results do not depend on it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifact dir) for the session:
    (URI, the artifact dir it writes)."""
    from servers import tracking_server

    root = tmp_path_factory.mktemp("mlflow-server")
    with tracking_server(root) as uri:
        yield uri, root / "artifacts"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_store):
    """The URI of the session's real ``mlflow server``."""
    return mlflow_store[0]
