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
        _record_discovery()


def _record_discovery() -> None:
    """Tell the registry where workflows were looked for, for its "no workflow is named" message."""
    from django.apps import apps
    from django.utils.module_loading import module_has_submodule

    from .core.workflow import Discovery, registry

    configs = apps.get_app_configs()
    found = tuple(f"{c.name}.workflows" for c in configs if module_has_submodule(c.module, "workflows"))
    registry.discovery = Discovery(modules=found, scanned=tuple(c.name for c in configs))
