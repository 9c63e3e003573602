"""URLs of agentflow's REST API: ``path("api/", include("agentflow.urls"))``.

The websocket of a run's events is not here: it is a Channels route, in :mod:`agentflow.routing`.
"""

from django.urls import path

from . import views

app_name = "agentflow"

urlpatterns = [
    path("health/", views.HealthView.as_view(), name="health"),
    path("workflows/", views.WorkflowListView.as_view(), name="workflow-list"),
    path("workflows/<str:name>/", views.WorkflowDetailView.as_view(), name="workflow-detail"),
    path("workflows/<str:name>/runs/", views.WorkflowRunsView.as_view(), name="workflow-start"),
    path("workflows/<str:name>/run/", views.WorkflowRunView.as_view(), name="workflow-run"),
    path("runs/", views.RunListView.as_view(), name="run-list"),
    # Run ids are matched as strings: a malformed one is the API's JSON 404, not Django's HTML one.
    path("runs/<str:run_id>/", views.RunDetailView.as_view(), name="run-detail"),
    path("runs/<str:run_id>/events/", views.RunEventsView.as_view(), name="run-events"),
    path("runs/<str:run_id>/cancel/", views.RunCancelView.as_view(), name="run-cancel"),
    path("runs/<str:run_id>/resume/", views.RunResumeView.as_view(), name="run-resume"),
    path("runs/<str:run_id>/input/", views.RunInputListView.as_view(), name="run-inputs"),
    path("runs/<str:run_id>/input/<str:key>/", views.RunInputView.as_view(), name="run-input"),
]
