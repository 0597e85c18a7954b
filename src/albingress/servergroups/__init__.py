"""Server groups created through the ALB API: the store, the API actions, and health checks."""
