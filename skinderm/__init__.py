"""skinderm: teach Qwen2.5-VL to diagnose, locate, box and outline skin lesions."""

__version__ = "0.1.0"
