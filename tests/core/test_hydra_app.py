"""nexfort inside a Hydra application: composing the mode never touches the caller's Hydra state (issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("hydra")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP = textwrap.dedent('''
    import hydra, torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton

    @hydra.main(config_path="conf", config_name="app", version_base=None)
    def main(cfg):
        gh, name, before = GlobalHydra.instance(), HydraConfig.get().job.name, dict(Singleton._instances)
        from nexfort.compilers import nexfort_compile
        from nexfort.core.config import resolve_config

        resolved = resolve_config({"mode": "max-optimize:low-precision"})
        assert resolved.flags.max_optimize and resolved.flags.low_precision
        # what failed before (GlobalHydra is already initialized): the mode is resolved when nexfort_compile is
        # called; compiling itself (at the first call) is the rest of the suite's business
        compiled = nexfort_compile(torch.nn.Linear(8, 8), mode="max-optimize:max-autotune")
        assert callable(compiled)
        # the application's own Hydra state is exactly what it was
        assert GlobalHydra.instance() is gh and gh.is_initialized()
        assert HydraConfig.get().job.name == name and dict(Singleton._instances) == before
        assert cfg.lr == 0.5
        print("APP-OK", name)

    main()
''')


def test_nexfort_inside_a_hydra_main_application(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text("lr: 0.5\n")
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py"), "hydra.run.dir=" + str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "APP-OK app" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_no_hydra_state_is_left_behind():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    from nexfort.core.config import compose_flags

    before = dict(Singleton._instances)
    initialized = GlobalHydra in before and GlobalHydra.instance().is_initialized()
    cfg = compose_flags(["max-optimize", "jit"])
    assert cfg.flags.max_optimize and cfg.flags.jit
    assert dict(Singleton._instances) == before
    assert (GlobalHydra in Singleton._instances and GlobalHydra.instance().is_initialized()) == initialized
