from django.urls import path

from . import api

app_name = "workflows"
urlpatterns = [
    path("api/workflows/<slug:key>/trigger", api.trigger, name="trigger"),
    path("api/executions/<int:pk>", api.execution_detail, name="execution"),
]
