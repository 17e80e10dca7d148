"""Base models, embedding files, textual inversion, prompt grammar, guided sampling."""
