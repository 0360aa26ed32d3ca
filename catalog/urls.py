from django.urls import path

from . import views

app_name = "catalog"
urlpatterns = [path("catalog/webhook", views.webhook, name="webhook")]
