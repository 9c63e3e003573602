from django.apps import AppConfig


class AgentflowConfig(AppConfig):
    name = "agentflow"
    verbose_name = "agentflow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import checks, setup_checks  # noqa: F401  (registers the system checks)

        # Every installed app's workflows.py registers its workflows by being imported.
        autodiscover_modules("workflows")
