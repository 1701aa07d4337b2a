import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from weirhub import ROOT, WEIR, Hub  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_sessionstart(session):
    if not WEIR.exists():
        raise pytest.UsageError(f"{WEIR} is missing: build it first (cargo build -p weir), or set WEIR_BIN")


@pytest.fixture
def rules_dir(tmp_path):
    d = tmp_path / "rules"
    shutil.copytree(FIXTURES / "rules", d)
    return d


@pytest.fixture
def hub(tmp_path, rules_dir):
    h = Hub(tmp_path, rules_dir).start()
    yield h
    h.stop()


def mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` (e.g. "8m") at `path`, for real full-disk cases. Needs
    root: in CI a failure to mount fails the test; elsewhere it is skipped, saying why."""
    import os
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        why = f"this test mounts a tmpfs and needs root: {r.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def run_weir(*args, **kw):
    return subprocess.run([str(WEIR), *map(str, args)], capture_output=True, text=True, timeout=60, **kw)
