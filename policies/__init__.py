"""muxgate policies."""
