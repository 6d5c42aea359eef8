"""Suite-wide settings (tests run tiny models on a 2-core CI machine) and the local Hub stand-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_server import HubServer, serving

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny matmuls: a second OpenMP thread only adds sync cost, and spins badly when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hub():
    """A Hub served over HTTP on loopback by tests/hub_server.py."""
    with serving(HubServer(("127.0.0.1", 0))) as server:
        yield server


@pytest.fixture(scope="module")
def run_client(hub, tmp_path_factory):
    """Run a Python script in a fresh interpreter that talks to `hub`; returns the JSON its last line prints.

    The huggingface_hub client is not patched: HF_ENDPOINT points at the server (read at import time), with a
    temporary HF_HOME cache, a fake token and HF_HUB_DISABLE_XET=1 so uploads take the LFS path the server implements.
    """
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "HF_TOKEN": "hf_test",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }

    def run(script: str, *args: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout.splitlines()[-1])

    return run
