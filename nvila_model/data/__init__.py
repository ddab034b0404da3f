"""Data: synthetic corpus (generate, scenes, render), LLaVA manifests and loader, validation, collators, registry."""
