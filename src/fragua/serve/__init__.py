"""The OpenAI-compatible server: engines that generate for registry versions, routing of aliases
and canary traffic, and the HTTP application."""
