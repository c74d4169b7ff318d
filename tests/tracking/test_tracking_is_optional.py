"""Tracking is optional: W&B that cannot start is one warning, and the run goes on untracked."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gemkr_lab.config.experiment import load_experiment
from gemkr_lab.run.cell import read_manifest, run_dir, with_seed

_TRAIN_WITH_A_DEAD_SERVICE = textwrap.dedent(
    """
    import sys
    import wandb.sdk.lib.service.service_process as service
    service.get_core_path = lambda: sys.argv[1]  # a W&B service that starts and never writes its port file
    from gemkr_lab.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
@pytest.mark.integration  # W&B's service
def test_a_run_whose_wandb_service_never_answers_trains_untracked_and_says_why(tmp_path, tiny_overrides):
    pids = tmp_path / "stand-in.pids"
    stand_in = tmp_path / "wandb-core"
    stand_in.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 600 </dev/null >/dev/null 2>&1\n", encoding="utf-8")
    stand_in.chmod(0o755)
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")] + ["tracking.mode=offline"]
    root = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_X_SERVICE_WAIT": "3"}
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _TRAIN_WITH_A_DEAD_SERVICE,
                str(stand_in),
                "train",
                "tiny-cpu/full",
                *overrides,
                "--root",
                str(root),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for pid in pids.read_text().split() if pids.is_file() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert pids.is_file(), "the stand-in service was never started: the test did not test anything"
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tracking skipped, the run goes on: could not start W&B" in done.stderr
    out = run_dir(root, with_seed(load_experiment("tiny-cpu/full", overrides), 0))
    manifest = read_manifest(out)
    assert manifest["status"] == "complete"
    assert manifest["tracking"]["wandb"] == "skipped" and "ServicePollForTokenError" in manifest["tracking"]["why"]
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["means"]["R@5"] >= 0
