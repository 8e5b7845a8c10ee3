"""The Ray cluster that ``hyper --tool=ray`` and ``--leaderboard --ray_address`` spread their runs over.

``local`` starts a cluster on this machine for the one command (it talks over loopback only and stops with the
command); ``auto`` joins the cluster started on this machine with ``ray start``; ``HOST:PORT`` joins the one whose
head node is there.
"""

import contextlib
import re

from recbole_gru4rec.errors import UsageError

# HOST:PORT as `ray start --address` takes it: a host name or IPv4 address, then a port number.
ADDRESS = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}")


def check_address(address):
    """``address`` itself, or a one-line error naming the forms allowed."""
    if address in ("local", "auto") or ADDRESS.fullmatch(address or ""):
        return address
    raise UsageError(f"--ray_address={address}: use local, auto or HOST:PORT (e.g. 10.0.0.1:6379)")


@contextlib.contextmanager
def connected(address, log_to_driver=True):
    """Ray, initialised on the cluster at ``address`` for the ``with`` block (left as it is if already initialised)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    where = {"_node_ip_address": "127.0.0.1"} if address == "local" else {"address": address}
    ray.init(include_dashboard=False, log_to_driver=log_to_driver, **where)
    try:
        yield ray
    finally:
        ray.shutdown()
