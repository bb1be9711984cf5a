"""An OpenAI API gateway for browser and mobile front-ends: the key stays on the server."""

__version__ = "0.1.0"
