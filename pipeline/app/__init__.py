"""Faust wiring: one app built by :func:`~pipeline.app.factory.create_app` from settings."""
