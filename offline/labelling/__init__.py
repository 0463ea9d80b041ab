"""The taxonomy's slow path: labelling prompts the task head is unsure of with an LLM (`escalon taxonomy label`)."""
