"""Where a routed request goes: the Backend interface, the pool backends and remote OpenAI-compatible upstreams."""
