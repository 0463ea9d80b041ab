"""Escalon: answer each LLM query with the cheapest model that gets it right."""
