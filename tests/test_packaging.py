"""The wheel installs one import root: policies/ and integrations/ map under ab_plugin."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_wheel_has_one_import_root(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=280)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"no build backend in this environment: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("ab_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"ab_plugin"}, roots
    for must in ("ab_plugin/policies/__init__.py", "ab_plugin/integrations/__init__.py", "ab_plugin/cli.py",
                 "ab_plugin/losses/__init__.py"):
        assert must in names
    # the wheel imports on its own (outside the source tree) with the same public API
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import ab_plugin, ab_plugin.policies, ab_plugin.integrations; "
            f"assert ab_plugin.__file__.startswith({str(site)!r}); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
