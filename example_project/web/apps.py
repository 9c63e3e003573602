from django.apps import AppConfig


class WebConfig(AppConfig):
    """The example project's pages: a form per workflow, a run list, a live run page (agentflow.js)."""

    name = "example_project.web"
    label = "example_web"
