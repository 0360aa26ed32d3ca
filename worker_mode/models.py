"""No tables: ``Cluster`` only gives the admin's Cluster page a place and a permission."""

from __future__ import annotations

from django.db import models


class Cluster(models.Model):
    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = "cluster"
        verbose_name_plural = "cluster"
