"""Escalon router service."""
