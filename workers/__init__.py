"""muxgate workers."""
