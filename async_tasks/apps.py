from django.apps import AppConfig

SERVICE_KEY = "async-task:process"


class AsyncTasksConfig(AppConfig):
    name = "async_tasks"
    verbose_name = "Imports and exports"

    def ready(self) -> None:
        from worker_mode import PeriodicTask, register_service

        from . import checks  # noqa: F401 (registers the system checks)
        from .conf import conf

        # Imports and exports of large files run far longer than rq's 180 s default.
        register_service(
            SERVICE_KEY,
            description="Record imports and exports",
            default_timeout=3600,
            # Recovery of tasks is worker_mode's: AsyncTask is ClaimedWork.
            periodic=(PeriodicTask("async_tasks.tasks.cleanup", every=conf.ASYNC_TASKS_CLEANUP_INTERVAL),),
        )
