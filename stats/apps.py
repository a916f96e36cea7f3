from django.apps import AppConfig


class StatsConfig(AppConfig):
    name = "stats"
    verbose_name = "Statistics and operations"

    def ready(self) -> None:
        from stats import checks  # noqa: F401 - registers the deployment checks
