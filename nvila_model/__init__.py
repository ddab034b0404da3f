"""nvila_model: the NVILA ('scale then compress') visual language model library shared by every stage."""

__version__ = "0.1.0"
