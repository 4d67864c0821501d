"""The example node and client work against a fresh standalone scheduler, as the README says."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.processes import create_token, kill, python, scheduler_process

EXAMPLE_TIMEOUT_S = 60


def test_example_node_and_client_complete_a_job_and_download_its_result(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "alice", "developer")
    # Nodes present the data directory's node.secret, as the README's node does.
    with scheduler_process(data_dir, tmp_path / "scheduler.log", open_nodes=False) as scheduler:
        node = python("examples/node.py", "--address", scheduler.execution_address,
                      "--jobs", "1", "--node-id", "example-lab-1", "--data-dir", str(data_dir),
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = python("examples/client.py", "--address", scheduler.submission_address,
                        "--token", token, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            client_out, _ = client.communicate(timeout=EXAMPLE_TIMEOUT_S)
            node_out, _ = node.communicate(timeout=EXAMPLE_TIMEOUT_S)
        finally:
            kill(client)
            kill(node)

    assert client.returncode == 0, f"client:\n{client_out}\nscheduler:\n{scheduler.log()}"
    assert node.returncode == 0, f"node:\n{node_out}\nscheduler:\n{scheduler.log()}"
    assert "is JOB_STATUS_COMPLETED" in client_out, client_out
    assert "downloaded" in client_out and "bytes of result" in client_out, client_out
    assert "ran job" in node_out, node_out
    log = scheduler.log()  # the node named itself and beat for its job (docs/nodes.md)
    assert "node=example-lab-1" in log and "its node sends heartbeats" in log, log
