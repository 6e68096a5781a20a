"""Training and evaluation data: instruction sets, multiple-choice tasks, prompt template and packing."""
