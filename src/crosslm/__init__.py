"""crosslm: mutual enhancement of a server LLM and client SLMs (CrossLM)."""

__version__ = "0.1.0"
