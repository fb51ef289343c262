"""The HTTP surface: the Starlette app, the OpenAI request and response schemas, the request path, errors, logs and metrics."""
