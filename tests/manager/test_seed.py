"""The seed's own test, as written in the seed."""

from ray_ft.manager.state import FaultToleranceManager, Task


def test_task_retry():
    manager = FaultToleranceManager({"max_retries": 3})
    task = Task(task_id="test")

    from ray_ft.failures import FailureType

    assert manager.handle_task_failure(task, FailureType.WORKER_CRASH, Exception("Test error"))
    assert manager.handle_task_failure(task, FailureType.WORKER_CRASH, Exception("Test error"))
    assert not manager.handle_task_failure(task, FailureType.WORKER_CRASH, Exception("Test error"))
