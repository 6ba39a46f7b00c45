"""The executor keys: executor, resources, [tool.orchestrate.slurm] (pure parsing),
and the sbatch options they become."""
import subprocess

import pytest

from orchestrate.core.settings import sbatch_options, slurm_time
from orchestrate.runtime.executors.slurm import job_script, parse_states
from orchestrate.core.spec import PipelineError
from orchestrate.runtime.workspace import load_workspace

AGENT = '[agents.a]\ncommand = "true"\n'


def load(tmp_path, pipeline: str, pyproject: str = ""):
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    (tmp_path / "pipelines" / "p.toml").write_text(pipeline)
    (tmp_path / "pyproject.toml").write_text(pyproject)
    return load_workspace(tmp_path)


def problems(tmp_path, pipeline: str, pyproject: str = "") -> str:
    with pytest.raises(PipelineError) as info:
        load(tmp_path, pipeline, pyproject)
    return "\n".join(info.value.problems)


def test_executor_resolves_agent_then_defaults_then_pipeline_then_workspace(tmp_path):
    ws = load(tmp_path, '''
executor = "local"
[agents.a]
command = "true"
[agents.b]
command = "true"
executor = "slurm"
''', '[tool.orchestrate]\nexecutor = "slurm"\n')
    assert [a.executor for a in ws.pipelines[0].agents] == ["local", "slurm"]
    ws = load(tmp_path, '[defaults]\nexecutor = "slurm"\n' + AGENT)
    assert ws.pipelines[0].agents[0].executor == "slurm"
    ws = load(tmp_path, AGENT, '[tool.orchestrate]\nexecutor = "slurm"\n')
    assert ws.executor == "slurm" and ws.pipelines[0].agents[0].executor == "slurm"
    assert load(tmp_path, AGENT).pipelines[0].agents[0].executor == "local"


def test_slurm_table_and_resources_parse(tmp_path):
    ws = load(tmp_path, AGENT + 'resources = { cpus = 2, mem = "4g", gpus = 1, time = "2h" }\n',
              '[tool.orchestrate.slurm]\npartition = "gpu"\naccount = "proj42"\nqos = "normal"\n'
              'sbatch_args = ["--constraint=a100"]\npoll = "500ms"\n')
    agent = ws.pipelines[0].agents[0]
    assert dict(agent.resources) == {"cpus": 2, "mem": "4G", "gpus": 1, "time": 7200.0}
    assert ws.slurm.poll == 0.5
    assert sbatch_options(ws.slurm, agent.resources) == [
        "--partition=gpu", "--account=proj42", "--qos=normal", "--cpus-per-task=2",
        "--mem=4G", "--gres=gpu:1", "--time=0-02:00:00", "--constraint=a100"]


@pytest.mark.parametrize("text,expected", [
    ('executor = "k8s"', "key 'executor': expected one of \"local\", \"slurm\", \"ray\", got 'k8s'"),
    ('resources = { mem = "4X" }', "key 'resources': mem: expected a memory size"),
    ('resources = { cpus = 0 }', "key 'resources': cpus: expected an integer >= 1"),
    ('resources = { disk = 1 }', "key 'resources': unknown resource 'disk'"),
    ('resources = { time = "soon" }', "key 'resources': time: expected a duration"),
    ('resources = "big"', "key 'resources': expected a table"),
])
def test_bad_agent_keys_name_file_agent_and_key(tmp_path, text, expected):
    said = problems(tmp_path, AGENT + text + "\n")
    assert f"pipelines/p.toml: agent 'a': {expected}" in said


@pytest.mark.parametrize("table,expected", [
    ('[tool.orchestrate]\nexecutor = 3', "tool.orchestrate.executor': expected one of"),
    ('[tool.orchestrate.slurm]\npartitions = "x"', "tool.orchestrate.slurm.partitions': unknown key"),
    ('[tool.orchestrate.slurm]\npoll = "often"', "tool.orchestrate.slurm.poll': expected a duration"),
    ('[tool.orchestrate.slurm]\nsbatch_args = "--x"', "tool.orchestrate.slurm.sbatch_args': expected a list"),
    ('[tool.orchestrate.slurm]\naccount = 42', "tool.orchestrate.slurm.account': expected a non-empty string"),
])
def test_bad_workspace_keys(tmp_path, table, expected):
    assert f"pyproject.toml: key '{expected}" in problems(tmp_path, AGENT, table)


def test_bad_memory_size_exits_3_with_one_line(ws):
    ws.write_pipeline("p", AGENT + 'resources = { mem = "4X" }\n')
    proc = ws.doit("p:a")
    assert proc.returncode == 3
    assert "pipelines/p.toml: agent 'a': key 'resources': mem: expected a memory size" \
        in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (ws.state / "status" / "p").exists() or not any((ws.state / "status" / "p").iterdir())


def test_time_and_states_and_script():
    assert slurm_time(90) == "0-00:02:00" and slurm_time(86400 + 3600) == "1-01:00:00"
    assert parse_states("12|RUNNING\n13|CANCELLED by 0\n14.batch|COMPLETED\n") == {
        "12": "RUNNING", "13": "CANCELLED", "14": "COMPLETED"}
    script = job_script(["/bin/sh", "-c", "echo 'hi'\nexit 3", "orchestrate:p:a"], None)
    out = subprocess.run(["/bin/sh", "-c", script.split("\n", 1)[1].replace("exec ", "", 1)],
                         capture_output=True, text=True)
    assert out.stdout == "hi\n" and out.returncode == 3


def test_info_shows_where_it_runs_and_its_resources(ws):
    ws.write_pipeline("p", AGENT + 'resources = { cpus = 2, mem = "4G", time = "90m" }\n')
    out = ws.doit("info", "p:a").stdout
    assert "runs on local, resources cpus=2 mem=4G time=1h30m (shown, not enforced, on local)" in out
