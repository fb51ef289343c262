"""muxgate gateway."""
