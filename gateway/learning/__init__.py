"""Routing that learns: routed-request records, feedback, shadow evaluation and judges, the router's stored state, the router CLI and the distillation export."""
