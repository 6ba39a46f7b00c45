"""Slurm executor against a real one-node Slurm (tests/slurm_cluster.py)."""
import os
import subprocess

from conftest import wait_until


def test_cluster_runs_a_batch_job(slurm_cluster, tmp_path):
    out = tmp_path / "job.log"
    submitted = subprocess.run(["sbatch", "--parsable", "--job-name=smoke", f"--output={out}",
                                "--wrap", "echo hello from slurm"],
                               capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()
    wait_until(lambda: out.exists() and "hello from slurm" in out.read_text(), 30, "job output")
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
