from django.apps import AppConfig

SERVICE_KEY = "workflow:process"


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        from worker_mode import register_service

        register_service(SERVICE_KEY, description="Asynchronous workflow executions")
