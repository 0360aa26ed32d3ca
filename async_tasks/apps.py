from django.apps import AppConfig

SERVICE_KEY = "async-task:process"


class AsyncTasksConfig(AppConfig):
    name = "async_tasks"
    verbose_name = "Asynchronous tasks"

    def ready(self) -> None:
        from worker_mode import register_service

        # Imports and exports of large files run far longer than rq's 180 s default.
        register_service(SERVICE_KEY, description="Record imports and exports", default_timeout=3600)
