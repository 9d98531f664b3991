"""litebridge worker SDK: make Python functions callable from litebridge.

Stdlib only, Python 3.9+. A worker speaks newline-delimited JSON-RPC 2.0 on its
stdin/stdout (see the litebridge spec, section 4)::

    from litebridge_worker import Worker
    worker = Worker()

    @worker.method()
    def analyze(description, domain="general"):
        return {"domain": domain, "words": len(description.split())}

    worker.run()
"""

from .worker import RequestIdFilter, Worker, WorkerError, cancelled, current_request_id

__all__ = ["RequestIdFilter", "Worker", "WorkerError", "cancelled", "current_request_id"]
__version__ = "0.1.0"
