"""tierguard: shadow-traffic quality monitor for LLM model tiering."""

from tierguard.client import AsyncShadowedAnthropic, ShadowedAnthropic

__all__ = ["AsyncShadowedAnthropic", "ShadowedAnthropic", "__version__"]
__version__ = "0.1.0"
