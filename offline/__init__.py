"""Escalon's offline tools: evaluation, labelling, judge reports and calibration fitting, benches, and the
job kinds that combine several services. They sit above the services and may import them (docs/architecture.md)."""
