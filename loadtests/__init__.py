"""muxgate loadtests."""
