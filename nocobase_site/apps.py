from django.apps import AppConfig


class SiteConfig(AppConfig):
    name = "nocobase_site"
    verbose_name = "Site"

    def ready(self) -> None:
        from . import checks  # noqa: F401 (registers the site's checks)
