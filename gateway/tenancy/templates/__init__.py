"""HTML templates shipped with the gateway (package data)."""
