"""Escalon distill service."""
