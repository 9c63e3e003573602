from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "web"

urlpatterns = [
    path("", views.index, name="index"),
    path("workflows/<str:name>/", views.workflow_page, name="workflow"),
    path("runs/", views.run_list, name="runs"),
    path("runs/<uuid:run_id>/", views.run_page, name="run"),
    path("runs/<uuid:run_id>/cancel/", views.cancel_run, name="cancel"),
    path("runs/<uuid:run_id>/resume/", views.resume_run, name="resume"),
    path("runs/<uuid:run_id>/questions/<str:key>/", views.question_form, name="question"),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="web/login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
