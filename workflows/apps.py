from django.apps import AppConfig

SERVICE_KEY = "workflow:process"


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        from worker_mode import PeriodicTask, register_service

        from . import checks, triggers  # noqa: F401 (registers the system checks)
        from .conf import conf

        register_service(
            SERVICE_KEY,
            description="Asynchronous workflow executions",
            # Recovery of executions is worker_mode's: Execution is ClaimedWork.
            periodic=(PeriodicTask("workflows.recovery.tick", every=conf.WORKFLOWS_TICK_INTERVAL),),
        )
        triggers.connect_signals()
