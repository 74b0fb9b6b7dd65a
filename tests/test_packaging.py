"""A wheel carries everything the code reads: built, installed in a fresh venv outside the checkout, and used.

The fresh venv gets the wheel alone (no source tree on its path); the heavy dependencies it needs are borrowed from
the test environment through a path entry, since installing torch again would take minutes.
"""

import json
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import imageio.v2 as imageio
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv holding only the built wheel, a working folder outside the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
                    str(ROOT)], check=True, cwd=work)
    [wheel] = (work / "dist").glob("evs_framework-*.whl")
    env_dir = work / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=work)
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    # dependencies from this environment, after the venv's own site-packages (so the wheel's code wins)
    borrowed = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (env_site / "borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    run_dir = work / "elsewhere"
    run_dir.mkdir()
    return env_dir / "bin", run_dir


def evs(installed, *args):
    bin_dir, run_dir = installed
    return subprocess.run([str(bin_dir / "evs"), *args], capture_output=True, text=True, cwd=run_dir, timeout=300)


def test_the_wheel_is_what_runs(installed):
    bin_dir, run_dir = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import evs_framework, evs_plugins; "
                            "print(evs_framework.__file__); print(evs_plugins.__file__)"],
                           capture_output=True, text=True, cwd=run_dir, check=True).stdout.split()
    assert all(str(bin_dir.parent) in path and str(ROOT) not in path for path in where), where


def test_models_and_plugins_from_the_wheel(installed):
    models = evs(installed, "models")
    assert models.returncode == 0, models.stderr
    assert "lightningEP" in models.stdout and "animatelcm" in models.stdout
    plugins = evs(installed, "plugins")
    assert plugins.returncode == 0 and "IDM_VDM_IDM" in plugins.stdout and "basic" in plugins.stdout


def test_the_shipped_suites_come_with_the_wheel(installed):
    """`evs toyworld eval` and `sweep` run suites that live in the package's data."""
    bin_dir, run_dir = installed
    listed = subprocess.run([str(bin_dir / "python"), "-c", "from evs_framework.bench.suite import SHIPPED_SUITES; "
                             "print(sorted(p.name for p in SHIPPED_SUITES.glob('*.yaml')))"],
                            capture_output=True, text=True, cwd=run_dir, check=True).stdout
    assert all(f"{name}.yaml" in listed for name in ("toy_enhance", "toy_enhance_vc2", "toy_sweep", "seed_enhance"))


def test_the_web_ui_comes_with_the_wheel(installed):
    bin_dir, run_dir = installed
    help_text = evs(installed, "ui", "--help")
    assert help_text.returncode == 0 and "--port" in help_text.stdout
    where = subprocess.run([str(bin_dir / "python"), "-c", "import evs_framework.ui.app as app; print(app.__file__)"],
                           capture_output=True, text=True, cwd=run_dir, check=True).stdout
    assert str(bin_dir.parent) in where


def test_plan_and_demo_from_the_wheel(installed, zoo, clip_file):
    _, run_dir = installed
    config = run_dir / "enhance.json"
    config.write_text(json.dumps({"mp4_files": [str(clip_file)], "prompts": ["a ball"], "vdm_type": "lightningEP",
                                  "idm_type": "EP_X2.0", "stable_steps": [8]}))
    plan = evs(installed, "plan", str(config), "--weights-dir", str(zoo))
    assert plan.returncode == 0, plan.stderr
    assert "all models: 42 unet calls" in plan.stdout

    demo = evs(installed, "demo", "-q")  # the toy models come from the wheel's own data
    assert demo.returncode == 0, demo.stderr
    for row in ("| source |", "| IDM |", "| VDM |", "| basic |", "| IDM_VDM_IDM |"):
        assert row in demo.stdout
    out = run_dir / "outputs" / "demo"
    with imageio.get_reader(out / "demo.side_by_side.mp4", format="FFMPEG") as reader:
        assert reader.get_meta_data()["size"][0] == 2 * 256 and reader.count_frames() == 16  # input | EVS
    assert len(imageio.mimread(out / "demo.IDM_VDM_IDM.mp4")) == 16
    assert (out / "demo.contact_sheet.png").stat().st_size > 10_000
