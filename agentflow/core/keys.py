"""Every Redis key agentflow uses. ``{run_id}`` is a hash tag: a run's keys share one Redis Cluster slot."""


def events(prefix: str, run_id: str) -> str:
    """The run's event stream."""
    return f"{prefix}run:{{{run_id}}}:events"


def meta(prefix: str, run_id: str) -> str:
    """Hash beside the stream: ``epoch`` (the only incarnation allowed to append), ``seq`` (last appended
    sequence number, for idempotent retries), ``wfc`` (workflow-level content events appended)."""
    return f"{prefix}run:{{{run_id}}}:meta"


def drain(prefix: str, host: str, pid: int) -> str:
    """Set by a Celery worker's main process when its warm shutdown begins; its prefork children poll it."""
    return f"{prefix}drain:{host}:{pid}"


def delivered(prefix: str, queue: str) -> str:
    """Hash of the recent takes from the Celery ``queue``: for each second (Redis's clock) in which workers
    took messages from it, the latest send time (milliseconds) among them."""
    return f"{prefix}queue:{queue}:delivered"


def rate_limit(prefix: str, limit_key: str, part: str) -> str:
    """A rate limit's ``log`` (sorted set of acquisitions), ``totals`` (hash) or ``block`` (a 429's
    Retry-After, with a PX expiry). ``{limit_key}`` is a hash tag, so one Lua script may touch all three."""
    return f"{prefix}ratelimit:{{{limit_key}}}:{part}"


def workers(prefix: str) -> str:
    """Sorted set of the workers that registered (member: worker id, score: last heartbeat, epoch seconds)."""
    return f"{prefix}workers"


def worker(prefix: str, worker_id: str) -> str:
    """A worker's registration (JSON), expiring when its heartbeats stop: ``agentflow.workers``."""
    return f"{prefix}worker:{worker_id}"
