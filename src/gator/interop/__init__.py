"""Moving models between Gator and other tools: Hugging Face transformers (hf.py)."""
