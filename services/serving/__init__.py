"""Escalon serving service."""
