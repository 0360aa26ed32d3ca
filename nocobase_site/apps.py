from django.apps import AppConfig


class SiteConfig(AppConfig):
    name = "nocobase_site"
    verbose_name = "Site"

    def ready(self) -> None:
        from worker_mode.signals import node_starting

        from . import checks  # registers the site's checks

        node_starting.connect(checks.refuse_weak_secret, dispatch_uid="nocobase_site.refuse_weak_secret")
