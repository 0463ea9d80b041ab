"""Escalon judge service."""
