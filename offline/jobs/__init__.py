"""Distill job kinds that need more than the distill service: registered through the `escalon.distill.jobs`
entry points (pyproject.toml), never imported by the service."""
