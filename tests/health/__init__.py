"""Tests of the active health checker (servergroups/health.py)."""
