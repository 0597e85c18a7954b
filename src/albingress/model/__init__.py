"""The ALB model: annotations and ServerGroup specs parsed into typed, immutable objects.

Parsing never raises past this layer: every problem becomes a
:class:`~albingress.diagnostics.Diagnostic`.
"""
