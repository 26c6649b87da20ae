"""run_triton.sh: the commands it builds in both modes, its errors, and a real start and
clean stop (model control off, nothing left running in its process group)."""

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.launcher import RUN_TRITON, TritonServer
from server.processes import shm_regions


def run(*args, timeout=120):
    return subprocess.run([str(RUN_TRITON), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_and_errors(tmp_path):
    assert "Modes" in run("--help").stdout
    missing = run("--repository", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no model repository at" in missing.stderr
    assert "python -m export torchvision" in missing.stderr
    bad_port = run("--repository", str(tmp_path), "--http-port", "80a")
    assert bad_port.returncode == 2 and "port '80a' is not a number" in bad_port.stderr
    bad_mode = run("--repository", str(tmp_path), "--mode", "k8s", "--dry-run")
    assert bad_mode.returncode == 2 and "--mode must be auto, embedded or container" in bad_mode.stderr


def test_the_setup_interpreter_in_python_is_not_the_serving_one(exported):
    """`make test PYTHON=python3.12` puts PYTHON in the environment for envs/setup.sh; the
    server must still run the venv's Python (it once took PYTHON and found no pytriton)."""
    env = {**os.environ, "PYTHON": "/bin/false"}
    result = subprocess.run([str(RUN_TRITON), "--mode", "embedded", "--repository",
                             str(exported.repository), "--dry-run"], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 0, result.stderr
    assert "tritonserver" in result.stdout


def test_embedded_command(exported):
    result = run("--mode", "embedded", "--repository", str(exported.repository),
                 "--http-port", "18100", "--grpc-port", "18101", "--metrics-port", "18102", "--dry-run")
    assert result.returncode == 0, result.stderr
    command = result.stdout
    for expected in ["--model-config-name=embedded", "--http-address=127.0.0.1",
                     "--http-port=18100", "--grpc-port=18101", "--metrics-port=18102",
                     "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                     f"--model-repository={exported.repository}",
                     "shm-default-byte-size=16777216",
                     # the watchdog's reloads: explicit control, restricted to a secret header
                     "--model-control-mode=explicit", "--load-model=\\*",
                     "--http-restricted-api=model-repository:triton-admin-key=PER-RUN-SECRET",
                     "--grpc-restricted-protocol=model-repository:triton-admin-key=PER-RUN-SECRET"]:
        assert expected in command, expected
    # The wheel's own backends, where the Python backend is.
    backends = re.search(r"--backend-directory=['\"]?([^'\" ]+)", command)
    assert backends and (Path(backends[1]) / "python").is_dir(), command
    unwatched = run("--mode", "embedded", "--repository", str(exported.repository),
                    "--watchdog", "off", "--dry-run").stdout
    assert "--model-control-mode=none" in unwatched and "restricted" not in unwatched


def test_container_command(exported):
    result = run("--mode", "container", "--repository", str(exported.repository), "--gpus", "device=1",
                 "--http-port", "18100", "--shm-size", "4g", "--image", "example/tritonserver:tag",
                 "--dry-run")
    assert result.returncode == 0, result.stderr
    command = result.stdout
    for expected in ["docker run", "--gpus device=1", "--shm-size 4g", "127.0.0.1:18100:8000",
                     f"{exported.repository}:/models:ro", "example/tritonserver:tag",
                     "--model-repository=/models", "--model-control-mode=none",
                     "requirements-serving.txt"]:
        assert expected in command, expected
    # In the container mask_rcnn uses config.pbtxt: libtorch on the GPU.
    assert "model-config-name" not in command


def test_start_refuses_model_control_and_stops_cleanly(exported, tmp_path):
    server = TritonServer(exported.repository, log=tmp_path / "server.log").start()
    try:
        pgid = os.getpgid(server.pid)
        # Closed before the stop: an open keep-alive connection holds Triton's exit for its
        # whole exit timeout, after which it exits without unloading the models.
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_server_ready()
            with pytest.raises(InferenceServerException,
                               match="This API is restricted, expecting header 'triton-admin-key'"):
                client.unload_model("pipeline_bls")
            assert client.is_model_ready("pipeline_bls")
    finally:
        server.stop()
    table = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    # Exited stubs may linger as zombies until PID 1 reaps them (lazily in some
    # sandboxes); they hold nothing. A live process would be a leak.
    leftover = [line for line in table.splitlines()
                if line.split()[1] == str(pgid) and not line.split()[2].startswith("Z")]
    assert leftover == [], f"processes left in group {pgid}: {leftover}\n{server.log_text()[-3000:]}"
    assert not shm_regions(pgid), "shared memory left behind"
    log = (tmp_path / "server.log").read_text()
    assert "stopping tritonserver" in log
    # A clean stop: Triton unloaded every model of the repository before it exited.
    models = sorted(p.name for p in exported.repository.iterdir() if (p / "config.pbtxt").exists())
    unloaded = sorted(set(re.findall(r"successfully unloaded '(\w+)'", log)))
    assert unloaded == models, (unloaded, models)
    assert "Found 0 live models" in log


def test_a_server_that_died_under_its_user_keeps_its_log(tmp_path):
    # Any repository does: one toy model starts in seconds.
    repository = tmp_path / "repository"
    shutil.copytree(Path(__file__).parent / "conformance" / "models" / "outputs_echo",
                    repository / "outputs_echo")
    with TritonServer(repository) as server:
        assert not server.exited
        os.killpg(os.getpgid(server.pid), signal.SIGKILL)  # dies, as by the OOM killer
        server.process.wait()
        assert server.exited
    try:
        assert "run_triton.sh: ready" in server.log_path.read_text()  # kept, to tell why
    finally:
        server.log_path.unlink(missing_ok=True)
    with TritonServer(repository) as stopped:  # stopped by its user: removed
        pass
    assert not stopped.log_path.exists()
