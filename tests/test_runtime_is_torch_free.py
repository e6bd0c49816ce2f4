"""The worker image ships onnxruntime only: no `service` module may pull in torch."""

import pkgutil
import subprocess
import sys

import service


def test_importing_every_service_module_does_not_load_torch() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
    assert (
        "service.controlplane.app" in modules and "service.scoring.model" in modules
    )  # the walk found them
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"torch modules loaded: {result.stdout.strip()}"
