"""Escalon gateway service."""
