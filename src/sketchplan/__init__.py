"""sketchplan: which optimizer fits this model on this GPU, at which rank or block size, and how fast is its step."""

__version__ = "0.1.0"
