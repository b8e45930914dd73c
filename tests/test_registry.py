"""The worker registry: who may join, who is alive."""

from service import registry


def test_sqlite_refuses_a_second_host_but_postgresql_does_not(session_factory, backend):
    registry.register_worker(
        session_factory, worker_id="a", host="one", pid=1, device="cpu", lease_seconds=30
    )
    register_elsewhere = lambda: registry.register_worker(  # noqa: E731
        session_factory, worker_id="b", host="two", pid=2, device="cpu", lease_seconds=30
    )
    if backend == "sqlite":
        try:
            register_elsewhere()
        except registry.WorkerRefusedError as error:
            assert "SQLite serves one machine only: use PostgreSQL" in str(error)
        else:
            raise AssertionError("a second host was let in")
    else:
        register_elsewhere()
