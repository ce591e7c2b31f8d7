"""A world of one needs no rendezvous: concurrent single-process runs on one host never race for a port."""

import os
import socket
import subprocess
import sys

SCRIPT = """
import torch.distributed as dist
from tide_megatron.distributed import init_distributed, destroy_distributed
print(init_distributed(backend="gloo", timeout_s=20))
t = __import__("torch").ones(1)
dist.all_reduce(t)
destroy_distributed()
"""


def test_a_world_of_one_starts_while_its_port_is_taken():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(0, 1)"
