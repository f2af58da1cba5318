"""URLs (no trailing slashes, like the other examples)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("orders", views.create_order),
    path("payments", views.pay),
    path("slow", views.slow),
    path("healthz", views.healthz),
]
