"""Distillation training: data, teachers, LoRA fine-tuning, the program sandbox and the arithmetic teacher."""
