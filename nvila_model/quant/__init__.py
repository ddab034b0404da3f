"""quant package of nvila_model."""
